"""Executing restarts: the manager that feeds each target's policy and acts on it.

The rules live in :class:`~guardian.recovery.policy.RestartPolicy`, a pure state machine.
:class:`RecoveryManager` holds one :class:`TargetRecovery` per supervised target (its
policy, backend, running task, last restart...), feeds the policy events (check results
from the bus, exit events from supervised processes), runs the restarts it asks for in
background tasks, publishes a :class:`RecoveryEvent` for every action, publishes its
standing decisions (:class:`RecoveryPlan`: which check's streak it owns, at which failure it
acts) so followers need not copy its thresholds, and persists the breaker state so a
crash-looping service stays given-up across a Guardian restart. Starting every service
in dependency order is :mod:`guardian.services.lifecycle`'s; it tells this manager through
:meth:`RecoveryManager.spawned` and :meth:`RecoveryManager.came_up`.

The timing rules (cooldown, backoff, breaker, startup, min_uptime) are documented in
:mod:`guardian.recovery.policy`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

from guardian.checks.registry import spec
from guardian.config.schema import Config
from guardian.core.clock import Clock
from guardian.core.events import Event, EventBus, RecoveryEvent, RecoveryKind, RecoveryPlan
from guardian.core.result import CheckResult, Status
from guardian.engine.startup import guards_startup
from guardian.recovery.breakers import BreakerStore
from guardian.recovery.policy import MAX_DELAY, Action, RestartPolicy
from guardian.recovery.restart import RestartRunner
from guardian.recovery.target import TargetRecovery
from guardian.services.base import ExitNotifying, ServiceBackend

log = logging.getLogger("guardian.recovery.manager")

MANUAL_WAIT = 60.0  # seconds a manual restart waits for its outcome before it answers


class RecoveryManager:
    """Subscribes to check results and exit events and restarts what the policy says."""

    def __init__(
        self,
        config: Config,
        bus: EventBus,
        backends: dict[str, ServiceBackend],
        clock: Clock,
        *,
        dry_run: bool = False,
        store: BreakerStore | None = None,
    ) -> None:
        self.config = config
        self.bus = bus
        self.backends = dict(backends)
        self.clock = clock
        self.dry_run = dry_run
        self.store = store
        self.targets: dict[str, TargetRecovery] = {
            name: TargetRecovery(name, backend, None) for name, backend in self.backends.items()
        }
        self._closed = False
        # Hooks for a last look before a restart (the queue journal's final /queue read):
        # every restart awaits them, bounded (see RestartRunner.look_before).
        self.before_restart: list[Callable[[str], Awaitable[None]]] = []
        self._runner = RestartRunner(clock, self._emit, self.before_restart)
        plans: list[RecoveryPlan] = []
        for target in config.targets:
            tr = self.targets.get(target.name)
            if target.service is None or tr is None or not target.recovery.enabled:
                continue
            liveness = {c.check_name for c in target.checks if c.liveness}
            tr.policy = RestartPolicy(target.recovery, liveness, name=target.name)
            # Checks that talk to the service itself: a start is proven by one of them.
            tr.proven_by_checks = any(c.enabled and guards_startup(c.kind) for c in target.checks)
            plans.extend(
                RecoveryPlan(
                    target.name,
                    c.check_name,
                    1 if spec(c.kind).service_state else target.recovery.failure_threshold,
                )
                for c in target.checks
                if spec(c.kind).service_state or c.liveness
            )
        self._restore()
        for name, backend in self.backends.items():
            if isinstance(backend, ExitNotifying):
                backend.add_exit_listener(self._exit_listener(name))
        self._unsubscribe: Callable[[], None] | None = bus.subscribe(self._on_event)
        for plan in plans:
            bus.publish(plan)

    @property
    def policies(self) -> dict[str, RestartPolicy]:
        """The restart policy of every target recovery restarts."""
        return {n: tr.policy for n, tr in self.targets.items() if tr.policy is not None}

    def _policy(self, target: str) -> RestartPolicy | None:
        tr = self.targets.get(target)
        return None if tr is None else tr.policy

    # -------------------------------------------------------------- plumbing

    def _restore(self) -> None:
        if self.store is None:
            return
        try:
            records = self.store.load()
        except Exception:
            log.exception("cannot load breaker state", extra={"event": "store_error"})
            return
        now, wall = self.clock.monotonic(), self.clock.now()
        for name, rec in records.items():
            policy = self._policy(name)
            if policy is not None:
                policy.restore(rec, now, wall)

    def _save(self, target: str) -> None:
        policy = self._policy(target)
        if self.store is None or self.dry_run or policy is None:
            return
        try:
            self.store.save(target, policy.to_record(self.clock.monotonic(), self.clock.now()))
        except Exception:
            log.exception("cannot save breaker state", extra={"target": target})

    def _emit(
        self,
        target: str,
        kind: RecoveryKind,
        *,
        attempt: int = 0,
        reason: str = "",
        detail: str = "",
        **values: Any,
    ) -> None:
        event = RecoveryEvent(
            target=target,
            kind=kind,
            time=self.clock.now(),
            attempt=attempt,
            reason=reason,
            detail=detail,
            values=values,
        )
        level = logging.WARNING if kind in _LOUD else logging.INFO
        log.log(
            level,
            "%s: %s%s",
            target,
            kind.value,
            _describe(kind, attempt, reason, detail),
            extra={"target": target, "event": kind.value, "attempt": attempt, "detail": detail},
        )
        self.bus.publish(event)

    def _exit_listener(self, target: str) -> Callable[[int | None], None]:
        def listener(code: int | None) -> None:
            self._on_exit(target, code)

        return listener

    # -------------------------------------------------------------- what lifecycle tells

    def spawned(self, name: str) -> None:
        """The service was started (by :class:`~guardian.services.lifecycle.ServiceLifecycle`):
        its boot begins, grace applies."""
        tr = self.targets.get(name)
        if tr is None:
            return
        tr.spawned = self.clock.monotonic()
        tr.proven = False
        if tr.policy is not None:
            tr.policy.started(tr.spawned)

    def came_up(self, name: str) -> None:
        """The service reported RUNNING after its start: a healthy run begins."""
        policy = self._policy(name)
        if policy is not None:
            policy.running(self.clock.monotonic())

    # -------------------------------------------------------------- what the bus tells

    def _on_event(self, event: Event) -> None:
        if not isinstance(event, CheckResult) or self._closed:
            return
        tr = self.targets.get(event.target)
        if tr is None or tr.policy is None:
            return
        self._judge_start(tr, event)
        self._verify(tr, event)
        began = event.started_mono
        stale = tr.restart_done is not None and began is not None and began < tr.restart_done
        if event.status == Status.FAILED and stale:
            return  # began before the last restart finished: about the old instance
        now = self.clock.monotonic()
        # The ladder's condition, if the check named one: no liveness streak for it.
        condition = event.condition.value if event.condition is not None else None
        reason = tr.policy.observe_check(
            event.check,
            event.kind,
            event.status,
            now,
            owned=condition is not None,
            startup=event.startup,
            condition=condition,
        )
        if reason is not None:
            self._want(tr, reason)
        else:
            self._stable_reset(tr, now)
            self._forget_futile(tr, now)

    def _verify(self, tr: TargetRecovery, event: CheckResult) -> None:
        """Did the restart fix the condition it was for? The new process's first result
        of the service says: the same condition again means restarting cannot fix it."""
        cond = tr.verify
        if cond is None or event.startup or not guards_startup(event.kind):
            return
        if tr.spawned is None or event.started_mono is None or event.started_mono < tr.spawned:
            return
        named = event.condition.value if event.condition is not None else None
        if named == cond:
            tr.verify = None
            tr.futile.add(cond)
            if tr.policy is not None:
                tr.policy.restart_condition = cond  # its results are no health meanwhile
            self._emit(
                tr.name, RecoveryKind.CONDITION_PERSISTS, reason=cond, detail=_persists(cond),
                condition=cond,
            )
        elif event.status in (Status.OK, Status.DEGRADED) and named is None:
            tr.verify = None  # the restart fixed it

    def _forget_futile(self, tr: TargetRecovery, now: float) -> None:
        """Conditions gone for stable_period may be restarted for again."""
        policy = tr.policy
        if not tr.futile or policy is None or policy.healthy_since is None:
            return
        if now - policy.healthy_since >= policy.cfg.stable_period:
            log.info(
                "%s: %s gone for %g s: restarts may be tried for it again",
                tr.name,
                ", ".join(sorted(tr.futile)),
                policy.cfg.stable_period,
                extra={"target": tr.name, "event": "condition_cleared"},
            )
            tr.futile.clear()
            policy.restart_condition = None

    def _judge_start(self, tr: TargetRecovery, event: CheckResult) -> None:
        """A passing check of the service itself, begun after the spawn, proves a start."""
        if event.status not in (Status.OK, Status.DEGRADED) or not guards_startup(event.kind):
            return
        if tr.spawned is None or event.started_mono is None or event.started_mono < tr.spawned:
            return
        tr.proven = True
        waiter = tr.start_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(("passed", 0))

    def _stable_reset(self, tr: TargetRecovery, now: float) -> None:
        policy = tr.policy
        if policy is None or not policy.stable_reset_due(now):
            return
        was_open = policy.breaker_open
        policy.reset()
        self._emit(
            tr.name,
            RecoveryKind.BREAKER_RESET,
            reason=f"healthy for {policy.cfg.stable_period:g} s",
            breaker_was_open=was_open,
        )
        self._save(tr.name)

    def _on_exit(self, target: str, code: int | None) -> None:
        tr = self.targets.get(target)
        if self._closed or tr is None:
            return
        waiter = tr.start_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(("exit", code))
        policy = tr.policy
        limit, _ = tr.judged_for()
        booting = (
            not tr.proven
            and tr.spawned is not None
            and self.clock.monotonic() - tr.spawned < limit
        )
        self._emit(
            target,
            RecoveryKind.EXITED,
            reason=f"exit code {code}",
            exit_code=code,
            during_startup=booting,
        )
        if policy is None:
            return
        # A crash after a long healthy run starts a fresh count instead of inheriting the
        # attempts of an old, unrelated incident.
        self._stable_reset(tr, self.clock.monotonic())
        self._want(tr, policy.observe_exit(code))

    # -------------------------------------------------------------- deciding

    def _want(self, tr: TargetRecovery, reason: str, condition: str | None = None) -> bool:
        """A restart is wanted (for ``condition``, if any); False: refused, since a restart
        did not fix that condition before."""
        policy = tr.policy
        assert policy is not None
        if condition is not None and condition in tr.futile:
            log.info(
                "%s: no restart for %s: it persisted after the last one (%s)",
                tr.name,
                condition,
                reason,
                extra={"target": tr.name, "event": "restart_futile", "condition": condition},
            )
            return False
        if condition is not None:
            policy.restart_condition = condition
        if policy.in_progress:
            tr.retrigger = reason  # e.g. it died again during the restart
            tr.retrigger_condition = condition
            return True
        if tr.busy:
            return True  # a wait is already scheduled
        now = self.clock.monotonic()
        d = policy.decide(now, reason)
        if d.action == Action.NONE:
            return True
        if d.action == Action.BREAKER_OPEN:
            self._emit(
                tr.name,
                RecoveryKind.BREAKER_OPEN,
                attempt=d.attempt,
                reason=reason,
                detail=f"{d.attempt} restart attempts within {policy.cfg.window:g} s; "
                "giving up until a manual restart",
            )
            self._save(tr.name)
            return True
        if d.action == Action.WAIT:
            assert d.at is not None
            tr.task = asyncio.create_task(
                self._wait_then_retry(tr, min(d.at - now, MAX_DELAY)),
                name=f"recovery-wait-{tr.name}",
            )
            tr.pending_condition = condition
            return True
        policy.begin(now)
        tr.verify = condition  # the new process's first result says whether it helped
        self._save(tr.name)
        if self.dry_run:
            self._emit(tr.name, RecoveryKind.DRY_RUN, attempt=d.attempt, reason=reason)
            self._finished(tr)
            return True
        tr.task = asyncio.create_task(
            self._restart_task(tr, d.attempt, reason), name=f"recovery-restart-{tr.name}"
        )
        return True

    def _finished(self, tr: TargetRecovery) -> None:
        now = self.clock.monotonic()
        if tr.policy is not None:
            tr.policy.finished(now)
        tr.restart_done = now

    async def _wait_then_retry(self, tr: TargetRecovery, delay: float) -> None:
        await self.clock.sleep(delay)
        assert tr.policy is not None
        reason = tr.policy.pending_reason
        condition, tr.pending_condition = tr.pending_condition, None
        tr.task = None
        if reason is not None and not self._closed:
            self._want(tr, reason, condition)

    async def _restart_task(self, tr: TargetRecovery, attempt: int, reason: str) -> None:
        try:
            if not await self._runner.execute(tr, attempt, reason):
                tr.verify = None  # a failed start says nothing about the condition
        finally:
            self._finished(tr)
            tr.task = None
        self._retrigger(tr)

    def _retrigger(self, tr: TargetRecovery) -> None:
        """The restart wanted while one ran, now that it is over."""
        again, tr.retrigger = tr.retrigger, None
        condition, tr.retrigger_condition = tr.retrigger_condition, None
        if again is not None and tr.policy is not None and not self._closed:
            self._want(tr, again, condition)

    # -------------------------------------------------------------- public API

    def request_restart(self, target: str, reason: str, *, condition: str | None = None) -> bool:
        """An automatic restart wanted by another part (the remediation ladder).

        It goes through the same policy as a liveness failure: cooldown, backoff, breaker,
        no overlap. ``condition``: what it is for; a condition a restart already failed to
        fix (it came back on the new process) gets none: False. KeyError for a target
        without a restart policy.
        """
        tr = self.targets.get(target)
        if tr is None or tr.policy is None:
            raise KeyError(target)
        return not self._closed and self._want(tr, reason, condition)

    async def restart(self, target: str, manual: bool = True) -> str:
        """Restart ``target`` now (CLI/API): closes its breaker first. KeyError if unknown."""
        tr = self.targets[target]
        async with tr.manual_lock:
            return await self._manual_restart(tr, manual)

    async def _manual_restart(self, tr: TargetRecovery, manual: bool) -> str:
        policy = tr.policy
        # Let a running automatic restart finish and drop a scheduled one. Finishing may
        # schedule a follow-up (its retrigger), hence the loop. From here to policy.begin()
        # nothing awaits, so no automatic restart can slip in between.
        while (task := tr.task) is not None and not task.done():
            waiter = tr.start_waiter
            if waiter is not None and not waiter.done():
                # Judging a start can last startup_timeout: a person asking now does not
                # wait for it (that attempt ends as superseded, not as a success).
                waiter.set_result(("superseded", None))
            if policy is not None and policy.in_progress:
                with contextlib.suppress(Exception):
                    await asyncio.shield(task)
            else:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            if tr.task is task:
                tr.task = None
        reason = "manual restart" if manual else "requested restart"
        tr.futile.clear()  # asked for by a person: whatever persisted, try again
        tr.verify = None
        if policy is not None:
            was_open, had = policy.breaker_open, bool(policy.attempt_times)
            policy.reset()
            if was_open or had:
                self._emit(tr.name, RecoveryKind.BREAKER_RESET, reason=reason)
            self._save(tr.name)
        if self.dry_run:
            self._emit(tr.name, RecoveryKind.DRY_RUN, reason=reason)
            return f"dry run: would restart {tr.name}"
        if policy is not None:
            policy.begin(self.clock.monotonic(), counted=False)
        outcome: list[bool] = []
        task = tr.task = asyncio.create_task(
            self._manual_task(tr, reason, outcome), name=f"recovery-manual-{tr.name}"
        )
        # A start proven by a check can take the service's whole boot: the caller (the
        # CLI, the API) gets an answer after MANUAL_WAIT at most; judging goes on.
        timer = asyncio.ensure_future(self.clock.sleep(MANUAL_WAIT))
        try:
            await asyncio.wait({task, timer}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            timer.cancel()
        status = await tr.backend.status()
        pid = f" (pid {status.pid})" if status.pid is not None else ""
        if not outcome:
            return f"restarting {tr.name}{pid}: no check has proven it up yet"
        if outcome[0]:
            return f"restarted {tr.name}{pid}"
        return f"restart of {tr.name} failed: {status.state.value} {status.detail}".strip()

    async def _manual_task(self, tr: TargetRecovery, reason: str, outcome: list[bool]) -> None:
        try:
            outcome.append(await self._runner.execute(tr, 0, reason))
        finally:
            if tr.policy is not None:
                self._finished(tr)
            if tr.task is asyncio.current_task():
                tr.task = None
        self._retrigger(tr)

    def snapshot(self) -> dict[str, dict[str, Any]]:
        now, wall = self.clock.monotonic(), self.clock.now()

        def iso(t: float | None) -> str | None:
            return None if t is None else (wall + timedelta(seconds=t - now)).isoformat()

        out: dict[str, dict[str, Any]] = {}
        for name, tr in self.targets.items():
            p = tr.policy
            if p is None:
                out[name] = dict(_DISABLED)
                continue
            p.prune(now)
            out[name] = {
                "enabled": True,
                "attempts": len(p.attempt_times),
                "last_restart": iso(max((t for t in (p.last_restart, p.last_begun)
                                         if t is not None), default=None)),
                "breaker_open": p.breaker_open,
                "next_allowed_at": iso(p.next_allowed_at(now)),
                "consecutive_failures": p.consecutive_failures,
                "restarting": p.in_progress,
                # When the running process was spawned (monotonic): a result that began
                # after it is about that process, even one that began while its restart
                # was still being judged (the one that proved it up); one that began
                # before says nothing about it.
                "up_since_mono": tr.spawned if tr.spawned is not None else p.started_at,
            }
        return out

    async def _cancel_tasks(self) -> None:
        tasks = [tr.task for tr in self.targets.values() if tr.task is not None]
        tasks = [t for t in tasks if not t.done()]
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        for tr in self.targets.values():
            tr.task = None

    async def aclose(self) -> None:
        """Stop listening and cancel background work; services keep running."""
        self._closed = True
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        await self._cancel_tasks()


_DISABLED: dict[str, Any] = {
    "enabled": False,
    "attempts": 0,
    "last_restart": None,
    "breaker_open": False,
    "next_allowed_at": None,
    "consecutive_failures": 0,
    "restarting": False,
    "up_since_mono": None,
}


def _persists(condition: str) -> str:
    """What a condition that outlived a restart means, for the incident's headline."""
    if condition == "memory_pressure":
        return "memory pressure persists after restart: not ComfyUI's own memory"
    return f"{condition.replace('_', ' ')} persists after restart: a restart cannot fix it"


def _describe(kind: RecoveryKind, attempt: int, reason: str, detail: str) -> str:
    """A log suffix that cannot be misread: a restart's reason is why it was started,
    never its outcome ("restart_succeeded (exited with code 1)" read as a contradiction)."""
    parts = [f"attempt {attempt}"] if attempt else []
    if reason:
        parts.append(f"because: {reason}" if kind.value.startswith("restart_") else reason)
    out = f" ({', '.join(parts)})" if parts else ""
    if detail and kind is not RecoveryKind.RESTART_SUCCEEDED:
        out += f": {detail}"
    return out


_LOUD = {
    RecoveryKind.CONDITION_PERSISTS,
    RecoveryKind.RESTART_FAILED,
    RecoveryKind.BREAKER_OPEN,
    RecoveryKind.EXITED,
    RecoveryKind.RESTART_STARTED,
}
