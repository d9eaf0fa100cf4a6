"""Deciding and executing restarts: a pure per-target policy and the manager that acts on it.

:class:`RestartPolicy` is a clock-driven state machine with no I/O, so every rule (cooldown,
backoff, breaker, grace, stable reset, liveness streaks) is tested in microseconds with a
FakeClock. :class:`RecoveryManager` feeds it events (check results from the bus, exit events
from supervised processes), runs the restarts it asks for in background tasks, publishes a
:class:`RecoveryEvent` for every action and persists the breaker state so a crash-looping
service stays given-up across a Guardian restart.

Timing rules (documented for operators):

* The first restart happens at once (unless a previous restart was less than ``cooldown``
  ago). After attempt *n* the next attempt waits
  ``max(cooldown, min(cooldown * backoff_factor ** (n - 1), backoff_max))`` seconds:
  with the defaults 30 s, 60 s, 120 s ... capped at 300 s.
* At most ``max_attempts`` attempts within ``window`` seconds. When one more would be
  needed the breaker opens: no further restarts, one ``breaker_open`` event (escalation).
* The breaker closes, and the attempt counter clears, after ``stable_period`` seconds of
  continuous health or on a manual restart (``guardian restart NAME`` / the API). Health
  starts when a (re)start reports RUNNING (or at the first passing check) and ends at a
  failed liveness/service check or an exit; it is judged on each check result and on exit.
* A failed result whose check began before the last restart finished is about the old
  instance and triggers nothing. Restarts of one target never overlap, manual ones included.
* Startup phase (see :mod:`guardian.engine.startup`): failed results marked ``startup`` (the
  service is booting: after Guardian's start or a restart, before its first success and
  within ``startup_timeout``) feed no streak. ``grace_period`` (deprecated) still skips
  liveness failures for that many seconds after a (re)start.
  A process exit or a failed ``service`` check always triggers at once.
* A restart succeeds only if the process stays up: a supervised child that exits within
  ``min_uptime`` of the restart, before a passing check, is a failed start
  (``restart_failed`` with its exit code and the last error of its log), counted toward
  the breaker like any attempt.
* All of it runs on the monotonic clock; wall time is only shown and stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from guardian.checks.registry import spec
from guardian.config.schema import Config, RecoveryConfig
from guardian.core.clock import Clock
from guardian.core.events import Event, EventBus, RecoveryEvent, RecoveryKind
from guardian.core.result import CheckResult, Status
from guardian.engine.startup import guards_startup
from guardian.recovery.breakers import BreakerRecord, BreakerStore
from guardian.services.base import ExitNotifying, ServiceBackend, ServiceState
from guardian.support.logscan import last_error

log = logging.getLogger("guardian.recovery.manager")

START_WAIT = 30.0  # seconds start_all waits for a dependency to report RUNNING
START_POLL = 0.1
# No decision waits longer than this, whatever the config's numbers multiply to: keeps
# every deadline finite and every wall-clock rendering of it inside datetime's range.
MAX_DELAY = 365 * 86400.0
LOG_TAIL_TIMEOUT = 2.0  # seconds to read a failed start's log for its last error


# =========================================================================== persistence
# BreakerRecord, BreakerStore and the Memory/Sqlite stores live in guardian.recovery.breakers, a
# component of Guardian's one SQLite file (guardian.db); imported above.


# =========================================================================== policy


class Action(StrEnum):
    NONE = "none"  # nothing to do (restart in progress, breaker already open)
    RESTART = "restart"
    WAIT = "wait"  # a restart is due, but not before `at`
    BREAKER_OPEN = "breaker_open"  # attempts exhausted just now


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    attempt: int = 0
    at: float | None = None  # monotonic time the restart becomes allowed (WAIT)
    reason: str = ""


class RestartPolicy:
    """The restart rules for one target; see the module docstring. No I/O, no tasks."""

    def __init__(self, cfg: RecoveryConfig, liveness: set[str] | None = None) -> None:
        self.cfg = cfg
        self.liveness = set(liveness or ())  # names of checks with `liveness: true`
        self.attempt_times: list[float] = []  # monotonic
        self.last_restart: float | None = None  # monotonic start of the last attempt
        self.started_at: float | None = None  # end of the last (re)start: grace starts here
        self.breaker_open = False
        self.in_progress = False
        self.pending_reason: str | None = None
        self.streaks: dict[str, int] = {}
        self.healthy_since: float | None = None

    # -------------------------------------------------------------- observations

    @property
    def consecutive_failures(self) -> int:
        return max(self.streaks.values(), default=0)

    def in_grace(self, now: float) -> bool:
        return self.started_at is not None and now - self.started_at < self.cfg.grace_period

    def observe_check(
        self,
        check: str,
        kind: str,
        status: Status,
        now: float,
        *,
        owned: bool = False,
        startup: bool = False,
    ) -> str | None:
        """Feed one check result; returns a restart reason when one is now needed.

        ``owned``: the failure names a condition the remediation ladder handles (a stuck
        prompt, memory pressure). It ends a healthy run but feeds no liveness streak: the
        ladder tries gentler actions first and asks for a restart itself when they fail.
        ``startup``: the service is booting (its startup phase); a failure says nothing yet.
        """
        if status == Status.SKIPPED:
            return None
        if startup and status == Status.FAILED:
            self.healthy_since = None
            return None
        if owned and status == Status.FAILED:
            self.healthy_since = None
            return None
        is_service = spec(kind).service_state
        if not is_service and check not in self.liveness:
            return None
        if status != Status.FAILED:
            self.streaks[check] = 0
            if self.pending_reason is not None and not self.pending_reason.startswith("exit"):
                self.pending_reason = None  # recovered on its own while we waited
            if self.healthy_since is None and self.consecutive_failures == 0:
                self.healthy_since = now
            return None
        self.healthy_since = None
        if self.in_progress:
            return None  # being restarted right now; a stale failure says nothing new
        if is_service:
            return f"service not running ({check})"
        if self.in_grace(now):
            return None
        self.streaks[check] = self.streaks.get(check, 0) + 1
        if self.streaks[check] >= self.cfg.failure_threshold:
            count = self.streaks[check]
            self.streaks[check] = 0
            return f"liveness check {check!r} failed {count} times in a row"
        return None

    def observe_exit(self, code: int | None) -> str:
        self.healthy_since = None
        if code is None:  # an adopted process: not Guardian's child, its status is not ours
            return "exited (code unknown: adopted, not Guardian's child)"
        return f"exited with code {code}"

    def stable_reset_due(self, now: float) -> bool:
        """True (once) when continuous health for stable_period should clear the counter."""
        if self.healthy_since is None or self.in_progress:
            return False
        if not (self.attempt_times or self.breaker_open):
            return False
        return now - self.healthy_since >= self.cfg.stable_period

    # -------------------------------------------------------------- decisions

    def gap_after(self, n: int) -> float:
        """Minimum seconds between attempt ``n`` and attempt ``n + 1`` (n >= 1)."""
        c = self.cfg
        grown = c.cooldown * _power(c.backoff_factor, max(n - 1, 0)) if c.cooldown > 0 else 0.0
        gap = max(c.cooldown, min(grown, c.backoff_max))
        return gap if gap <= MAX_DELAY else MAX_DELAY  # also turns inf (and nan) into finite

    def prune(self, now: float) -> None:
        cutoff = now - self.cfg.window
        self.attempt_times = [t for t in self.attempt_times if t > cutoff]

    def next_allowed_at(self, now: float) -> float | None:
        if self.breaker_open:
            return None
        self.prune(now)
        if self.last_restart is None:
            return now
        return self.last_restart + self.gap_after(max(len(self.attempt_times), 1))

    def decide(self, now: float, reason: str) -> Decision:
        """A restart is wanted now: restart, wait, open the breaker, or nothing."""
        if self.in_progress or self.breaker_open or not self.cfg.enabled:
            return Decision(Action.NONE, reason=reason)
        self.prune(now)
        if len(self.attempt_times) >= self.cfg.max_attempts:
            self.breaker_open = True
            self.pending_reason = None
            return Decision(Action.BREAKER_OPEN, attempt=len(self.attempt_times), reason=reason)
        allowed = self.next_allowed_at(now)
        if allowed is not None and now < allowed:
            self.pending_reason = reason
            return Decision(Action.WAIT, at=allowed, reason=reason)
        return Decision(Action.RESTART, attempt=len(self.attempt_times) + 1, reason=reason)

    def begin(self, now: float, *, counted: bool = True) -> None:
        self.in_progress = True
        self.pending_reason = None
        self.healthy_since = None
        self.streaks.clear()
        if counted:
            self.attempt_times.append(now)
            self.last_restart = now

    def finished(self, now: float) -> None:
        self.in_progress = False
        self.started_at = now

    def started(self, now: float) -> None:
        """The service was (first) started outside a restart: grace applies."""
        self.started_at = now

    def running(self, now: float) -> None:
        """The service reported RUNNING after a (re)start: a healthy run begins.

        Targets without liveness checks only ever send exit events, so without this their
        attempt counter could never be cleared by a stable run. A failed check ends the run.
        """
        if self.healthy_since is None:
            self.healthy_since = now

    def reset(self) -> None:
        """Close the breaker and forget attempts (manual restart or stable again)."""
        self.attempt_times.clear()
        self.breaker_open = False
        self.pending_reason = None
        self.streaks.clear()

    # -------------------------------------------------------------- persistence

    def to_record(self, mono_now: float, wall_now: datetime) -> BreakerRecord:
        def wall(t: float) -> str:
            return (wall_now - timedelta(seconds=mono_now - t)).isoformat()

        self.prune(mono_now)
        return BreakerRecord(
            attempts=len(self.attempt_times),
            attempt_times=[wall(t) for t in self.attempt_times],
            last_restart=None if self.last_restart is None else wall(self.last_restart),
            breaker_open=self.breaker_open,
        )

    def restore(self, rec: BreakerRecord, mono_now: float, wall_now: datetime) -> None:
        def mono(iso: str) -> float | None:
            try:
                t = datetime.fromisoformat(iso)
            except ValueError:
                return None
            if t.tzinfo is None:
                return None
            return mono_now - (wall_now - t).total_seconds()

        self.attempt_times = [m for m in (mono(s) for s in rec.attempt_times) if m is not None]
        self.last_restart = None if rec.last_restart is None else mono(rec.last_restart)
        self.breaker_open = rec.breaker_open
        self.prune(mono_now)


def _power(base: float, exp: int) -> float:
    """``base ** exp`` that saturates at infinity instead of raising OverflowError."""
    try:
        return float(base**exp)
    except OverflowError:
        return math.inf


# =========================================================================== manager


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
        start_wait: float = START_WAIT,
    ) -> None:
        self.config = config
        self.bus = bus
        self.backends = dict(backends)
        self.clock = clock
        self.dry_run = dry_run
        self.store = store
        self.start_wait = start_wait
        self.policies: dict[str, RestartPolicy] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}  # one restart or wait per target
        self._retrigger: dict[str, str] = {}
        self._manual_locks: dict[str, asyncio.Lock] = {}  # one manual restart at a time
        self._restart_done: dict[str, float] = {}  # monotonic end of the last restart
        # A restart being judged (min_uptime): resolves with ("exit", code) or ("passed", 0).
        self._start_waiters: dict[str, asyncio.Future[tuple[str, int | None]]] = {}
        self._spawned: dict[str, float] = {}  # monotonic time the running child was spawned
        self._closed = False
        for target in config.targets:
            if target.service is None or target.name not in self.backends:
                continue
            if not target.recovery.enabled:
                continue
            liveness = {c.check_name for c in target.checks if c.liveness}
            self.policies[target.name] = RestartPolicy(target.recovery, liveness)
        self._restore()
        for name, backend in self.backends.items():
            if isinstance(backend, ExitNotifying):
                backend.add_exit_listener(self._exit_listener(name))
        self._unsubscribe: Callable[[], None] | None = bus.subscribe(self._on_event)

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
            if name in self.policies:
                self.policies[name].restore(rec, now, wall)

    def _save(self, target: str) -> None:
        if self.store is None or self.dry_run or target not in self.policies:
            return
        try:
            rec = self.policies[target].to_record(self.clock.monotonic(), self.clock.now())
            self.store.save(target, rec)
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

    def _on_event(self, event: Event) -> None:
        if not isinstance(event, CheckResult) or self._closed:
            return
        policy = self.policies.get(event.target)
        if policy is None:
            return
        self._judge_start(event)
        done = self._restart_done.get(event.target)
        began = event.started_mono
        stale = done is not None and began is not None and began < done
        if event.status == Status.FAILED and stale:
            return  # began before the last restart finished: about the old instance
        now = self.clock.monotonic()
        owned = isinstance(event.values.get("condition"), str)
        reason = policy.observe_check(
            event.check, event.kind, event.status, now, owned=owned, startup=event.startup
        )
        if reason is not None:
            self._want(event.target, reason)
        else:
            self._stable_reset(event.target, now)

    def _judge_start(self, event: CheckResult) -> None:
        """A passing check of the service itself proves a restart came up (min_uptime)."""
        waiter = self._start_waiters.get(event.target)
        if waiter is None or waiter.done():
            return
        if event.status not in (Status.OK, Status.DEGRADED) or not guards_startup(event.kind):
            return
        spawned = self._spawned.get(event.target)
        if spawned is None or event.started_mono is None or event.started_mono < spawned:
            return
        waiter.set_result(("passed", 0))

    def _stable_reset(self, target: str, now: float) -> None:
        policy = self.policies[target]
        if not policy.stable_reset_due(now):
            return
        was_open = policy.breaker_open
        policy.reset()
        self._emit(
            target,
            RecoveryKind.BREAKER_RESET,
            reason=f"healthy for {policy.cfg.stable_period:g} s",
            breaker_was_open=was_open,
        )
        self._save(target)

    def _on_exit(self, target: str, code: int | None) -> None:
        if self._closed:
            return
        waiter = self._start_waiters.get(target)
        if waiter is not None and not waiter.done():
            waiter.set_result(("exit", code))
        spawned = self._spawned.get(target)
        policy_cfg = self.policies[target].cfg if target in self.policies else None
        booting = (
            spawned is not None
            and policy_cfg is not None
            and self.clock.monotonic() - spawned < policy_cfg.min_uptime
        )
        self._emit(
            target,
            RecoveryKind.EXITED,
            reason=f"exit code {code}",
            exit_code=code,
            during_startup=booting,
        )
        policy = self.policies.get(target)
        if policy is None:
            return
        # A crash after a long healthy run starts a fresh count instead of inheriting the
        # attempts of an old, unrelated incident.
        self._stable_reset(target, self.clock.monotonic())
        self._want(target, policy.observe_exit(code))

    # -------------------------------------------------------------- deciding

    def _busy(self, target: str) -> bool:
        task = self._tasks.get(target)
        return task is not None and not task.done()

    def _want(self, target: str, reason: str) -> None:
        policy = self.policies[target]
        if policy.in_progress:
            self._retrigger[target] = reason  # e.g. it died again during the restart
            return
        if self._busy(target):
            return  # a wait is already scheduled
        now = self.clock.monotonic()
        d = policy.decide(now, reason)
        if d.action == Action.NONE:
            return
        if d.action == Action.BREAKER_OPEN:
            self._emit(
                target,
                RecoveryKind.BREAKER_OPEN,
                attempt=d.attempt,
                reason=reason,
                detail=f"{d.attempt} restart attempts within {policy.cfg.window:g} s; "
                "giving up until a manual restart",
            )
            self._save(target)
            return
        if d.action == Action.WAIT:
            assert d.at is not None
            self._tasks[target] = asyncio.create_task(
                self._wait_then_retry(target, min(d.at - now, MAX_DELAY)),
                name=f"recovery-wait-{target}",
            )
            return
        policy.begin(now)
        self._save(target)
        if self.dry_run:
            self._emit(target, RecoveryKind.DRY_RUN, attempt=d.attempt, reason=reason)
            self._finished(target)
            return
        self._tasks[target] = asyncio.create_task(
            self._restart_task(target, d.attempt, reason), name=f"recovery-restart-{target}"
        )

    def _finished(self, target: str) -> None:
        now = self.clock.monotonic()
        self.policies[target].finished(now)
        self._restart_done[target] = now

    async def _wait_then_retry(self, target: str, delay: float) -> None:
        await self.clock.sleep(delay)
        policy = self.policies[target]
        reason = policy.pending_reason
        self._tasks.pop(target, None)
        if reason is not None and not self._closed:
            self._want(target, reason)

    async def _restart_task(self, target: str, attempt: int, reason: str) -> None:
        try:
            await self._execute(target, attempt, reason)
        finally:
            self._finished(target)
            self._tasks.pop(target, None)
        again = self._retrigger.pop(target, None)
        if again is not None and not self._closed:
            self._want(target, again)

    async def _execute(self, target: str, attempt: int, reason: str) -> bool:
        """Restart one backend and say whether it came back running and stayed up."""
        backend = self.backends[target]
        self._emit(target, RecoveryKind.RESTART_STARTED, attempt=attempt, reason=reason)
        t0 = self.clock.monotonic()
        waiter: asyncio.Future[tuple[str, int | None]] | None = None
        if isinstance(backend, ExitNotifying):
            waiter = asyncio.get_running_loop().create_future()
            self._start_waiters[target] = waiter
        try:
            await backend.restart()
            self._spawned[target] = self.clock.monotonic()
            status = await backend.status()
            up = status.state in (ServiceState.RUNNING, ServiceState.STARTING)
            verdict = await self._stays_up(target, waiter) if up and waiter else None
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._emit(
                target,
                RecoveryKind.RESTART_FAILED,
                attempt=attempt,
                reason=reason,
                detail=f"{type(exc).__name__}: {exc}",
            )
            self._retrigger.setdefault(target, f"restart failed: {exc}")
            return False
        finally:
            if waiter is not None and self._start_waiters.get(target) is waiter:
                del self._start_waiters[target]
        took = round(self.clock.monotonic() - t0, 3)
        exited = waiter is not None and waiter.done() and waiter.result()[0] == "exit"
        if up and not exited:
            if target in self.policies:
                self.policies[target].running(self.clock.monotonic())
            self._emit(
                target,
                RecoveryKind.RESTART_SUCCEEDED,
                attempt=attempt,
                reason=reason,
                detail=status.detail,
                pid=status.pid,
                duration_s=took,
                proven_by=verdict or "running",
            )
            return True
        if exited:
            assert waiter is not None
            code = waiter.result()[1]
            error = await self._last_error(target)
            headline = f"exits during startup with code {code}" + (f": {error}" if error else "")
            self._emit(
                target,
                RecoveryKind.RESTART_FAILED,
                attempt=attempt,
                reason=reason,
                detail=headline,
                duration_s=took,
                exit_code=code,
                startup_exit=True,
                last_error=error,
            )
            self._retrigger[target] = headline  # the next attempt says why
            return False
        self._emit(
            target,
            RecoveryKind.RESTART_FAILED,
            attempt=attempt,
            reason=reason,
            detail=f"{status.state.value} after restart: {status.detail}",
            duration_s=took,
        )
        self._retrigger.setdefault(target, f"not running after restart ({status.state.value})")
        return False

    async def _stays_up(
        self, target: str, waiter: asyncio.Future[tuple[str, int | None]]
    ) -> str | None:
        """Wait until the new child passes a check, exits, or has been up ``min_uptime``.

        Returns what proved it up ("passed", "min_uptime"), or None when it exited.
        """
        policy = self.policies.get(target)
        min_uptime = policy.cfg.min_uptime if policy is not None else 0.0
        if min_uptime > 0 and not waiter.done():
            timer = asyncio.ensure_future(self.clock.sleep(min(min_uptime, MAX_DELAY)))
            try:
                racing: set[asyncio.Future[Any]] = {waiter, timer}
                await asyncio.wait(racing, return_when=asyncio.FIRST_COMPLETED)
            finally:
                timer.cancel()
        if not waiter.done():
            return "min_uptime" if min_uptime > 0 else None
        kind, _ = waiter.result()
        return None if kind == "exit" else "passed"

    async def _last_error(self, target: str) -> str:
        """The last exception line of the service's own log ('' when none is readable)."""
        try:
            lines = await asyncio.wait_for(
                self.backends[target].log_tail(200), timeout=LOG_TAIL_TIMEOUT
            )
        except Exception:
            return ""
        found = last_error(lines)
        return "" if found is None else found.line[:300]

    # -------------------------------------------------------------- public API

    def request_restart(self, target: str, reason: str) -> None:
        """An automatic restart wanted by another part (the remediation ladder).

        It goes through the same policy as a liveness failure: cooldown, backoff, breaker,
        no overlap. KeyError for a target without a restart policy.
        """
        if target not in self.policies:
            raise KeyError(target)
        if not self._closed:
            self._want(target, reason)

    async def restart(self, target: str, manual: bool = True) -> str:
        """Restart ``target`` now (CLI/API): closes its breaker first. KeyError if unknown."""
        if target not in self.backends:
            raise KeyError(target)
        async with self._manual_locks.setdefault(target, asyncio.Lock()):
            return await self._manual_restart(target, manual)

    async def _manual_restart(self, target: str, manual: bool) -> str:
        policy = self.policies.get(target)
        # Let a running automatic restart finish and drop a scheduled one. Finishing may
        # schedule a follow-up (its retrigger), hence the loop. From here to policy.begin()
        # nothing awaits, so no automatic restart can slip in between.
        while (task := self._tasks.get(target)) is not None and not task.done():
            if policy is not None and policy.in_progress:
                with contextlib.suppress(Exception):
                    await asyncio.shield(task)
            else:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            if self._tasks.get(target) is task:
                self._tasks.pop(target)
        reason = "manual restart" if manual else "requested restart"
        if policy is not None:
            was_open, had = policy.breaker_open, bool(policy.attempt_times)
            policy.reset()
            if was_open or had:
                self._emit(target, RecoveryKind.BREAKER_RESET, reason=reason)
            self._save(target)
        if self.dry_run:
            self._emit(target, RecoveryKind.DRY_RUN, reason=reason)
            return f"dry run: would restart {target}"
        if policy is not None:
            policy.begin(self.clock.monotonic(), counted=False)
        try:
            ok = await self._execute(target, 0, reason)
        finally:
            if policy is not None:
                self._finished(target)
        again = self._retrigger.pop(target, None)
        if again is not None and policy is not None and not self._closed:
            self._want(target, again)
        status = await self.backends[target].status()
        if ok:
            pid = f" (pid {status.pid})" if status.pid is not None else ""
            return f"restarted {target}{pid}"
        return f"restart of {target} failed: {status.state.value} {status.detail}".strip()

    def start_order(self) -> list[str]:
        """Targets with a backend, each after the targets it depends on (config order)."""
        deps = {
            t.name: [d for d in t.recovery.depends_on if d in self.backends]
            for t in self.config.targets
            if t.name in self.backends
        }
        order: list[str] = []
        visiting: set[str] = set()

        def visit(name: str) -> None:
            if name in order or name in visiting:
                return  # done, or a cycle: break it rather than hang
            visiting.add(name)
            for dep in deps.get(name, []):
                visit(dep)
            visiting.discard(name)
            order.append(name)

        for name in deps:
            visit(name)
        for name in self.backends:
            if name not in order:
                order.append(name)
        return order

    async def start_all(self) -> None:
        """Start every backend, dependencies first, each dependency RUNNING before its users."""
        needed = {d for t in self.config.targets for d in t.recovery.depends_on}
        for name in self.start_order():
            backend = self.backends[name]
            try:
                await backend.start()
                self._spawned[name] = self.clock.monotonic()
            except Exception as exc:
                log.error(
                    "%s: start failed: %s",
                    name,
                    exc,
                    extra={"target": name, "event": "start_failed"},
                )
                continue
            policy = self.policies.get(name)
            if policy is not None:
                policy.started(self.clock.monotonic())
            if name in needed:
                up = await self._wait_running(name)
            else:
                try:
                    up = (await backend.status()).state == ServiceState.RUNNING
                except Exception:
                    up = False
            if policy is not None and up:
                policy.running(self.clock.monotonic())

    async def _wait_running(self, name: str) -> bool:
        deadline = self.clock.monotonic() + self.start_wait
        while True:
            try:
                if (await self.backends[name].status()).state == ServiceState.RUNNING:
                    return True
            except Exception:
                pass
            if self.clock.monotonic() >= deadline:
                log.warning(
                    "%s: not running %.0f s after start; starting its dependents anyway",
                    name,
                    self.start_wait,
                    extra={"target": name, "event": "start_timeout"},
                )
                return False
            await self.clock.sleep(START_POLL)

    async def stop_all(self) -> None:
        """Stop every backend, dependents first."""
        await self._cancel_tasks()
        for name in reversed(self.start_order()):
            try:
                await self.backends[name].stop()
            except Exception as exc:
                log.error(
                    "%s: stop failed: %s", name, exc, extra={"target": name, "event": "stop_failed"}
                )

    def snapshot(self) -> dict[str, dict[str, Any]]:
        now, wall = self.clock.monotonic(), self.clock.now()

        def iso(t: float | None) -> str | None:
            return None if t is None else (wall + timedelta(seconds=t - now)).isoformat()

        out: dict[str, dict[str, Any]] = {}
        for name in self.backends:
            p = self.policies.get(name)
            if p is None:
                out[name] = {
                    "enabled": False,
                    "attempts": 0,
                    "last_restart": None,
                    "breaker_open": False,
                    "next_allowed_at": None,
                    "consecutive_failures": 0,
                    "restarting": False,
                    "up_since_mono": None,
                }
                continue
            p.prune(now)
            out[name] = {
                "enabled": True,
                "attempts": len(p.attempt_times),
                "last_restart": iso(p.last_restart),
                "breaker_open": p.breaker_open,
                "next_allowed_at": iso(p.next_allowed_at(now)),
                "consecutive_failures": p.consecutive_failures,
                "restarting": p.in_progress,
                # End of the last (re)start on the monotonic clock: results that began
                # before it say nothing about the process running now.
                "up_since_mono": p.started_at,
            }
        return out

    async def _cancel_tasks(self) -> None:
        tasks = [t for t in self._tasks.values() if not t.done()]
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._tasks.clear()

    async def aclose(self) -> None:
        """Stop listening and cancel background work; services keep running."""
        self._closed = True
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        await self._cancel_tasks()


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
    RecoveryKind.RESTART_FAILED,
    RecoveryKind.BREAKER_OPEN,
    RecoveryKind.EXITED,
    RecoveryKind.RESTART_STARTED,
}
