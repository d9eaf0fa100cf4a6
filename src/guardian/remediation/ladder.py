"""The remediation ladder: the gentlest action that can fix a ComfyUI condition, verified,
before a restart.

The ``comfyui`` check names a condition (``stuck_running``, ``stuck_pending``,
``memory_pressure``) with its evidence; recovery leaves such results alone and this ladder
takes them, one run per target at a time, in a background task:

* ``stuck_running``: ``POST /interrupt {"prompt_id"}``, wait ``interrupt_wait``, re-read
  ``/queue``; the prompt gone is a success, the same prompt still running asks recovery for a
  restart (which applies cooldown, backoff and the breaker).
* ``memory_pressure``: only while idle unless memory is critical, ``POST /free`` (unload
  models, free memory), wait ``free_wait``, re-read ``/system_stats``; below no threshold
  and something freed is a success, else a restart, and only while the queue is idle, or
  with memory critical and the running job shown making no progress.
* ``stuck_pending``: ``POST /interrupt`` (no prompt: frees a wedged executor), wait
  ``pending_wait``, re-read ``/queue``; something running or the pending list moving is a
  success, else a restart.

A newer result for the same check without a condition stops the ladder as cleared. Every
rung is logged and published as a :class:`RecoveryEvent`.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from guardian.checks.comfyui.health import (
    ComfyUICheckConfig,
    ComfyUIError,
    _Api,
    parse_queue,
    parse_system_stats,
)
from guardian.config.schema import Config, RemediationConfig
from guardian.core.clock import Clock
from guardian.core.events import Event, EventBus, RecoveryEvent, RecoveryKind
from guardian.core.result import CheckResult, Value
from guardian.recovery.manager import RecoveryManager

log = logging.getLogger("guardian.remediation.ladder")

CONDITIONS = ("stuck_running", "stuck_pending", "memory_pressure")
_LOUD = {RecoveryKind.REMEDIATION_FAILED}


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
        for target in config.targets:
            if not target.remediation.enabled:
                continue
            for check in target.checks:
                if isinstance(check, ComfyUICheckConfig):
                    self.settings[target.name] = target.remediation
                    self.checks[(target.name, check.check_name)] = check
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._latest: dict[tuple[str, str], CheckResult] = {}
        self._gave_up: dict[str, tuple[str, str | None]] = {}  # target -> (condition, key)
        self._unsubscribe = bus.subscribe(self._on_event)

    # -------------------------------------------------------------- plumbing

    def _on_event(self, event: Event) -> None:
        if not isinstance(event, CheckResult) or event.kind != "comfyui":
            return
        key = (event.target, event.check)
        if key not in self.checks:
            return
        self._latest[key] = event
        condition = event.values.get("condition")
        if not isinstance(condition, str) or condition not in CONDITIONS or event.startup:
            if event.values.get("online") is True and not isinstance(condition, str):
                self._gave_up.pop(event.target, None)  # healthy again: start afresh
            return
        task = self._tasks.get(event.target)
        if task is not None and not task.done():
            return  # one ladder run per target at a time
        self._tasks[event.target] = asyncio.create_task(
            self._run(event, condition), name=f"remediation-{event.target}"
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
                and not isinstance(latest.values.get("condition"), str))

    def _restart(self, target: str, reason: str) -> bool:
        """Ask recovery for a restart (cooldown/backoff/breaker apply); False if it can't."""
        if not self.settings[target].restart or self.recovery is None:
            return False
        try:
            self.recovery.request_restart(target, reason)
        except KeyError:
            log.warning("%s: no service to restart (%s)", target, reason,
                        extra={"target": target, "event": "remediation_no_service"})
            return False
        return True

    async def _run(self, result: CheckResult, condition: str) -> None:
        cfg = self.checks[(result.target, result.check)]
        api = _Api(cfg.url, cfg.timeout, cfg.max_body_bytes)
        try:
            if condition == "stuck_running":
                await self._stuck_running(result, api)
            elif condition == "memory_pressure":
                await self._memory_pressure(result, cfg, api)
            else:
                await self._stuck_pending(result, api)
        except ComfyUIError as exc:
            self._emit(result.target, RecoveryKind.REMEDIATION_FAILED, condition,
                       f"ComfyUI did not answer the ladder: {exc}", condition=condition,
                       action="none", restart_requested=False)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s: remediation ladder failed", result.target)
        finally:
            await api.aclose()

    def _start(self, result: CheckResult, condition: str, **values: Any) -> bool:
        """Publish REMEDIATION_STARTED; False in dry-run (decide and log, act not)."""
        evidence = {k: v for k, v in result.values.items() if k.startswith("progress_")}
        self._emit(result.target, RecoveryKind.REMEDIATION_STARTED, condition, result.reason,
                   condition=condition, dry_run=self.dry_run, **evidence, **values)
        return not self.dry_run

    def _outcome(self, result: CheckResult, condition: str, ok: bool, action: str,
                 detail: str, restart_reason: str | None = None,
                 values: dict[str, Value] | None = None) -> None:
        values = values or {}
        restarted = False
        if not ok and restart_reason is not None:
            restarted = self._restart(result.target, restart_reason)
            key = values.get("prompt_id")
            self._gave_up[result.target] = (condition, key if isinstance(key, str) else None)
        kind = RecoveryKind.REMEDIATION_SUCCEEDED if ok else RecoveryKind.REMEDIATION_FAILED
        self._emit(result.target, kind, condition, detail, condition=condition, action=action,
                   restart_requested=restarted, **values)

    # -------------------------------------------------------------- the rungs

    async def _stuck_running(self, result: CheckResult, api: _Api) -> None:
        target, condition = result.target, "stuck_running"
        prompt_id = result.values.get("running_prompt_id")
        if not isinstance(prompt_id, str):
            return
        if self._gave_up.get(target) == (condition, prompt_id):
            # /interrupt already failed for this very prompt: only the restart is left, and
            # recovery's policy decides when (cooldown, backoff, breaker).
            self._restart(target, f"prompt {prompt_id} ignored /interrupt")
            return
        if not self._start(result, condition, prompt_id=prompt_id):
            return
        status, _ = await api.request("POST", "/interrupt", {"prompt_id": prompt_id})
        wait = self.settings[target].interrupt_wait
        self._emit(target, RecoveryKind.INTERRUPT_SENT, condition,
                   f"POST /interrupt for prompt {prompt_id}: HTTP {status}",
                   condition=condition, prompt_id=prompt_id, http_status=status, wait_s=wait)
        await self.clock.sleep(wait)
        running, _ = parse_queue(await api.get_json("/queue"))
        if not running or running[0][1] != prompt_id:
            self._outcome(result, condition, True, "interrupt",
                          f"prompt {prompt_id} stopped within {wait:g} s of /interrupt",
                          values={"prompt_id": prompt_id})
        elif self._cleared(result):
            self._outcome(result, condition, True, "none",
                          f"prompt {prompt_id} is making progress again",
                          values={"prompt_id": prompt_id})
        else:
            self._outcome(result, condition, False, "interrupt",
                          f"prompt {prompt_id} still running {wait:g} s after /interrupt",
                          restart_reason=f"prompt {prompt_id} stuck and ignored /interrupt",
                          values={"prompt_id": prompt_id})

    async def _memory_pressure(
        self, result: CheckResult, cfg: ComfyUICheckConfig, api: _Api
    ) -> None:
        target, condition = result.target, "memory_pressure"
        critical = result.values.get("memory_critical") is True
        running, pending = parse_queue(await api.get_json("/queue"))
        if (running or pending) and not critical:
            return  # a job started meanwhile: low memory is its business now
        before = _free_memory(result.values)
        if not self._start(result, condition, memory_critical=critical,
                           **_prefixed(before, "before")):
            return
        status, _ = await api.request(
            "POST", "/free", {"unload_models": True, "free_memory": True}
        )
        wait = self.settings[target].free_wait
        self._emit(target, RecoveryKind.FREE_SENT, condition,
                   f"POST /free (unload_models, free_memory): HTTP {status}",
                   condition=condition, http_status=status, wait_s=wait)
        await self.clock.sleep(wait)
        stats, _ = parse_system_stats(await api.get_json("/system_stats"), cfg.vram_free_min_mb)
        after = _free_memory(stats)
        freed = round(sum(after.values()) - sum(before.values()), 1)
        values: dict[str, Value] = {**_prefixed(before, "before"), **_prefixed(after, "after"),
                                    "freed_mb": freed, "memory_critical": critical}
        still = _pressure(after, cfg)
        if not still and freed > 0:
            self._outcome(result, condition, True, "free", f"/free released {freed:.0f} MB",
                          values=values)
            return
        if self._cleared(result):
            self._outcome(result, condition, True, "free", "memory pressure cleared",
                          values=values)
            return
        running, pending = parse_queue(await api.get_json("/queue"))
        idle = not running and not pending
        may_restart = idle or (critical and result.values.get("progress_moved") is False)
        detail = f"/free released {freed:.0f} MB; still {still or 'no memory freed'}"
        if not may_restart:
            detail += "; not restarting while a job runs"
        self._outcome(result, condition, False, "free", detail,
                      restart_reason=f"memory pressure not relieved by /free ({still})"
                      if may_restart else None, values=values)

    async def _stuck_pending(self, result: CheckResult, api: _Api) -> None:
        target, condition = result.target, "stuck_pending"
        if self._gave_up.get(target) == (condition, None):
            self._restart(target, "pending queue did not move after /interrupt")
            return
        if not self._start(result, condition):
            return
        before_running, before_pending = parse_queue(await api.get_json("/queue"))
        status, _ = await api.request("POST", "/interrupt", {})
        wait = self.settings[target].pending_wait
        self._emit(target, RecoveryKind.INTERRUPT_SENT, condition,
                   f"POST /interrupt (nothing running, {len(before_pending)} pending): "
                   f"HTTP {status}", condition=condition, http_status=status, wait_s=wait)
        await self.clock.sleep(wait)
        running, pending = parse_queue(await api.get_json("/queue"))
        moved = {p[1] for p in pending} != {p[1] for p in before_pending}
        if running or before_running or moved or self._cleared(result):
            self._outcome(result, condition, True, "interrupt", "the queue is moving again")
        else:
            self._outcome(result, condition, False, "interrupt",
                          f"{len(pending)} pending, still nothing running after {wait:g} s",
                          restart_reason="pending queue did not move after /interrupt")

    async def aclose(self) -> None:
        self._unsubscribe()
        tasks = [t for t in self._tasks.values() if not t.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _free_memory(values: Any) -> dict[str, float]:
    """Free MB per GPU (``vram.<i>``) and of RAM (``ram``) from check values."""
    out: dict[str, float] = {}
    for i in range(int(values.get("devices") or 0)):
        if values.get(f"device_type.{i}") == "cpu":
            continue
        mb = values.get(f"vram_free_mb.{i}")
        if isinstance(mb, int | float):
            out[f"vram.{i}"] = float(mb)
    ram = values.get("ram_free_mb")
    if isinstance(ram, int | float):
        out["ram"] = float(ram)
    return out


def _prefixed(free: dict[str, float], when: str) -> dict[str, Value]:
    return {f"{when}_{key.replace('.', '_')}_free_mb": mb for key, mb in free.items()}


def _pressure(free: dict[str, float], cfg: ComfyUICheckConfig) -> str:
    """What is still below a threshold ('' when nothing is)."""
    low = []
    for key, mb in free.items():
        limit = cfg.ram_free_min_mb if key == "ram" else cfg.vram_free_min_mb
        if limit is not None and mb < limit:
            low.append(f"{key} {mb:.0f} MB free < {limit:g} MB")
    return "; ".join(low)
