"""The remediation ladder: the gentlest action that can fix a condition, verified, before a
restart.

A check names a condition (``stuck_running``, ``stuck_pending``, ``memory_pressure``) with its
evidence; recovery leaves such results alone and this ladder takes them, one run per target at
a time, in a background task. It knows no condition itself: it drives the
:class:`~guardian.remediation.rung.Rung` declared for the condition (see
:mod:`guardian.remediation.rungs.comfyui`) — applies, start, act, wait, verify — and asks
recovery for a restart (cooldown, backoff and breaker apply) when the rung's verification
fails with a restart reason.

A newer result for the same check without a condition stops the ladder as cleared. An action
that did not help is not repeated on every check: the next run waits ``BACKOFF_FIRST``,
doubling to ``BACKOFF_MAX`` while it keeps failing. Every rung is logged and published as a
:class:`RecoveryEvent`.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from guardian.checks.comfyui.client import ComfyUIClient, ComfyUIError
from guardian.checks.comfyui.health import ComfyUICheckConfig
from guardian.checks.registry import spec
from guardian.config.schema import Config, RemediationConfig
from guardian.core.clock import Clock
from guardian.core.events import Event, EventBus, RecoveryEvent, RecoveryKind
from guardian.core.result import CheckResult
from guardian.recovery.manager import RecoveryManager
from guardian.remediation.rung import Rung, Treatment, Verdict
from guardian.remediation.rungs.comfyui import comfyui_rungs

log = logging.getLogger("guardian.remediation.ladder")

_LOUD = {RecoveryKind.REMEDIATION_FAILED}
# After a gentle action that did not help, the next one waits this long, doubling up to the
# cap while it keeps not helping (a condition that clears starts afresh).
BACKOFF_FIRST = 60.0
BACKOFF_MAX = 3600.0


class Remediation:
    """Listens for ComfyUI results with a condition and runs the ladder for them."""

    def __init__(
        self,
        config: Config,
        bus: EventBus,
        clock: Clock,
        recovery: RecoveryManager | None,
        *,
        dry_run: bool = False,
    ) -> None:
        self.bus = bus
        self.clock = clock
        self.recovery = recovery
        self.dry_run = dry_run
        self.settings: dict[str, RemediationConfig] = {}
        self.checks: dict[tuple[str, str], ComfyUICheckConfig] = {}
        self.rungs: dict[tuple[str, str], dict[str, Rung]] = {}
        for target in config.targets:
            if not target.remediation.enabled:
                continue
            for check in target.checks:
                if isinstance(check, ComfyUICheckConfig):
                    self.settings[target.name] = target.remediation
                    self.checks[(target.name, check.check_name)] = check
                    self.rungs[(target.name, check.check_name)] = {
                        rung.condition: rung for rung in comfyui_rungs(check)
                    }
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._latest: dict[tuple[str, str], CheckResult] = {}
        self._gave_up: dict[str, tuple[str, str | None]] = {}  # target -> (condition, key)
        # target -> (monotonic time the next run may start, the last wait): a gentle action
        # that did not help is not repeated on every check (a /free every 30 s forever).
        self._backoff: dict[str, tuple[float, float]] = {}
        self._unsubscribe = bus.subscribe(self._on_event)

    # -------------------------------------------------------------- plumbing

    def _on_event(self, event: Event) -> None:
        if not isinstance(event, CheckResult) or not spec(event.kind).conditions:
            return
        key = (event.target, event.check)
        if key not in self.checks:
            return
        self._latest[key] = event
        condition = event.condition
        rung = self.rungs[key].get(condition) if condition is not None else None
        if rung is None or event.startup:
            if event.values.get("online") is True and condition is None:
                self._gave_up.pop(event.target, None)  # healthy again: start afresh
                self._backoff.pop(event.target, None)
            return
        task = self._tasks.get(event.target)
        if task is not None and not task.done():
            return  # one ladder run per target at a time
        if self.clock.monotonic() < self._backoff.get(event.target, (0.0, 0.0))[0]:
            return  # the last action did not help: not again before the backoff ends
        self._tasks[event.target] = asyncio.create_task(
            self._run(event, rung), name=f"remediation-{event.target}"
        )

    def _emit(self, target: str, kind: RecoveryKind, reason: str, detail: str = "",
              **values: Any) -> None:
        event = RecoveryEvent(target=target, kind=kind, time=self.clock.now(), reason=reason,
                              detail=detail, values=values)
        log.log(
            logging.WARNING if kind in _LOUD else logging.INFO,
            "%s: %s (%s)%s", target, kind.value, reason, f": {detail}" if detail else "",
            extra={"target": target, "event": kind.value, "detail": detail},
        )
        self.bus.publish(event)

    def _cleared(self, result: CheckResult) -> bool:
        """A newer result of the same check without a condition: the ladder can stop."""
        latest = self._latest.get((result.target, result.check))
        return (latest is not None and latest.finished > result.finished
                and latest.values.get("online") is True
                and latest.condition is None)

    def _restart(self, target: str, reason: str, condition: str) -> bool:
        """Ask recovery for a restart for ``condition`` (cooldown/backoff/breaker apply);
        False if it can't, or won't: a restart already failed to fix that condition."""
        if not self.settings[target].restart or self.recovery is None:
            return False
        try:
            return self.recovery.request_restart(target, reason, condition=condition)
        except KeyError:
            log.warning("%s: no service to restart (%s)", target, reason,
                        extra={"target": target, "event": "remediation_no_service"})
            return False

    async def _run(self, result: CheckResult, rung: Rung) -> None:
        cfg = self.checks[(result.target, result.check)]
        client = ComfyUIClient(cfg.url, cfg.timeout, cfg.max_body_bytes)
        condition = rung.condition
        try:
            await self._climb(result, rung, client)
        except ComfyUIError as exc:
            self._emit(result.target, RecoveryKind.REMEDIATION_FAILED, condition,
                       f"ComfyUI did not answer the ladder: {exc}", condition=condition,
                       action="none", restart_requested=False)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s: remediation ladder failed", result.target)
        finally:
            await client.aclose()

    async def _climb(self, result: CheckResult, rung: Rung, client: ComfyUIClient) -> None:
        """One rung, gentlest first: applies, start, act, wait, verify, maybe a restart."""
        target, condition = result.target, rung.condition
        treatment = await rung.applies(result, client)
        if treatment is None:
            return
        if (treatment.retry_reason is not None
                and self._gave_up.get(target) == (condition, treatment.key)):
            # The action already failed for this very condition and key: only the restart
            # is left, and recovery's policy decides when (cooldown, backoff, breaker).
            self._restart(target, treatment.retry_reason, condition)
            return
        if not self._start(result, condition, **treatment.values):
            return
        action = await rung.act(result, treatment, client, self.settings[target])
        self._emit(target, action.kind, condition, action.detail, condition=condition,
                   **action.values, wait_s=action.wait)
        await self.clock.sleep(action.wait)
        verdict = await rung.verify(result, treatment, action, client,
                                    lambda: self._cleared(result))
        self._outcome(result, condition, treatment, verdict)

    def _start(self, result: CheckResult, condition: str, **values: Any) -> bool:
        """Publish REMEDIATION_STARTED; False in dry-run (decide and log, act not)."""
        evidence = {k: v for k, v in result.values.items() if k.startswith("progress_")}
        self._emit(result.target, RecoveryKind.REMEDIATION_STARTED, condition, result.reason,
                   condition=condition, dry_run=self.dry_run, **evidence, **values)
        return not self.dry_run

    def _outcome(self, result: CheckResult, condition: str, treatment: Treatment,
                 verdict: Verdict) -> None:
        restarted = False
        if not verdict.ok and verdict.restart_reason is not None:
            restarted = self._restart(result.target, verdict.restart_reason, condition)
            self._gave_up[result.target] = (condition, treatment.key)
        if verdict.ok:
            self._backoff.pop(result.target, None)
        else:
            _, last = self._backoff.get(result.target, (0.0, 0.0))
            wait = min(max(last * 2, BACKOFF_FIRST), BACKOFF_MAX)
            self._backoff[result.target] = (self.clock.monotonic() + wait, wait)
        kind = RecoveryKind.REMEDIATION_SUCCEEDED if verdict.ok else RecoveryKind.REMEDIATION_FAILED
        self._emit(result.target, kind, condition, verdict.detail, condition=condition,
                   action=verdict.action, restart_requested=restarted, **verdict.values)

    async def aclose(self) -> None:
        self._unsubscribe()
        tasks = [t for t in self._tasks.values() if not t.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

