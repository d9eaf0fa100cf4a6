"""Running one restart and judging it: did the new process come up, and stay up?

Apart from the manager (which decides *whether* and *when* to restart) because judging a
start has its own rules: with a check of the service itself, the start succeeds on the
first passing check begun after the spawn (within ``startup_timeout``), and an exit before
it is a failed start whenever it comes; without one, staying up ``min_uptime`` proves it
(see :meth:`~guardian.recovery.target.TargetRecovery.judged_for`). A failed start's
headline takes the last error of the service's own log.

Before it stops the process, every restart awaits the *before-restart hooks* (the queue
journal's last ``/queue`` read, so that a prompt queued in the last instant is restored),
together bounded by :data:`BEFORE_RESTART_TIMEOUT`: a hung ComfyUI delays its own restart
by 2 s at most, a dead one refuses the connection in milliseconds.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

from guardian.core.clock import Clock
from guardian.core.events import RecoveryKind
from guardian.recovery.policy import MAX_DELAY
from guardian.recovery.target import StartVerdict, TargetRecovery
from guardian.services.base import ExitNotifying, ServiceState
from guardian.services.process.backend import MARKER
from guardian.support.logscan import last_error, output_of_last_start

LOG_TAIL_TIMEOUT = 2.0  # seconds to read a failed start's log for its last error
BEFORE_RESTART_TIMEOUT = 2.0  # seconds all before-restart hooks may delay one restart

log = logging.getLogger("guardian.recovery.restart")

BeforeRestart = Callable[[str], Awaitable[None]]


class Emit(Protocol):
    """Publishes one recovery event (the manager's, so it is logged alike)."""

    def __call__(
        self,
        target: str,
        kind: RecoveryKind,
        *,
        attempt: int = 0,
        reason: str = "",
        detail: str = "",
        **values: Any,
    ) -> None: ...


class RestartRunner:
    """Executes restarts and publishes their outcome."""

    def __init__(self, clock: Clock, emit: Emit, before: Sequence[BeforeRestart] = ()) -> None:
        self.clock = clock
        self._emit = emit
        self._before = before  # the manager's list: the runtime fills it after this starts

    async def look_before(self, target: str) -> None:
        """Await the before-restart hooks (the queue journal's last read), at most
        :data:`BEFORE_RESTART_TIMEOUT` seconds in all: a hook's trouble is logged and never
        stops the restart it precedes."""
        if not self._before:
            return
        hooks = asyncio.gather(*(hook(target) for hook in self._before))
        try:
            await asyncio.wait_for(hooks, timeout=BEFORE_RESTART_TIMEOUT)
        except TimeoutError:
            log.warning("%s: the last look before the restart took over %g s: restarting "
                        "without it", target, BEFORE_RESTART_TIMEOUT,
                        extra={"target": target, "event": "before_restart_timeout"})
        except Exception as exc:
            log.error("%s: the last look before the restart failed: %s", target, exc,
                      extra={"target": target, "event": "before_restart_failed"})

    async def execute(self, tr: TargetRecovery, attempt: int, reason: str) -> bool:
        """Restart one backend and say whether it came back running and stayed up."""
        target, backend = tr.name, tr.backend
        self._emit(target, RecoveryKind.RESTART_STARTED, attempt=attempt, reason=reason)
        t0 = self.clock.monotonic()
        waiter: asyncio.Future[StartVerdict] | None = None
        if isinstance(backend, ExitNotifying):
            waiter = asyncio.get_running_loop().create_future()
            tr.start_waiter = waiter
        try:
            await self.look_before(target)
            await backend.restart()
            tr.spawned = self.clock.monotonic()
            tr.proven = False
            status = await backend.status()
            up = status.state in (ServiceState.RUNNING, ServiceState.STARTING)
            verdict = await self._stays_up(tr, waiter) if up and waiter else None
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
            if tr.retrigger is None:
                tr.retrigger, tr.retrigger_condition = f"restart failed: {exc}", None
            return False
        finally:
            if waiter is not None and tr.start_waiter is waiter:
                tr.start_waiter = None
        took = round(self.clock.monotonic() - t0, 3)
        exited = waiter is not None and waiter.done() and waiter.result()[0] == "exit"
        if up and not exited and verdict == "superseded":
            self._emit(
                target,
                RecoveryKind.RESTART_FAILED,
                attempt=attempt,
                reason=reason,
                detail="superseded by a manual restart before a check proved it up",
                duration_s=took,
                superseded=True,
            )
            return False
        if up and not exited and verdict == "startup_timeout":
            limit, _ = tr.judged_for()
            detail = f"no check passed within startup_timeout ({limit:g} s)"
            self._emit(
                target,
                RecoveryKind.RESTART_FAILED,
                attempt=attempt,
                reason=reason,
                detail=detail,
                duration_s=took,
                startup_timeout=True,
            )
            tr.retrigger, tr.retrigger_condition = detail, None
            return False
        if up and not exited:
            if tr.policy is not None:
                tr.policy.running(self.clock.monotonic())
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
            error = await self._last_error(tr)
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
            tr.retrigger, tr.retrigger_condition = headline, None  # the next attempt says why
            return False
        self._emit(
            target,
            RecoveryKind.RESTART_FAILED,
            attempt=attempt,
            reason=reason,
            detail=f"{status.state.value} after restart: {status.detail}",
            duration_s=took,
        )
        if tr.retrigger is None:
            tr.retrigger = f"not running after restart ({status.state.value})"
            tr.retrigger_condition = None
        return False

    async def _stays_up(
        self, tr: TargetRecovery, waiter: asyncio.Future[StartVerdict]
    ) -> str | None:
        """Wait until the new child passes a check, exits, or its judging time is over
        (:meth:`TargetRecovery.judged_for`).

        Returns what proved it up ("passed", "min_uptime"), "startup_timeout" when no check
        passed in time (a failed start), "superseded" when a manual restart cut the judging
        short, or None when it exited.
        """
        limit, rule = tr.judged_for()
        if limit > 0 and not waiter.done():
            timer = asyncio.ensure_future(self.clock.sleep(min(limit, MAX_DELAY)))
            try:
                racing: set[asyncio.Future[Any]] = {waiter, timer}
                await asyncio.wait(racing, return_when=asyncio.FIRST_COMPLETED)
            finally:
                timer.cancel()
        if not waiter.done():
            return rule if limit > 0 else None
        kind, _ = waiter.result()
        if kind == "superseded":
            return kind
        return None if kind == "exit" else "passed"

    async def _last_error(self, tr: TargetRecovery) -> str:
        """The last exception line of the service's own log ('' when none is readable)."""
        try:
            lines = await asyncio.wait_for(tr.backend.log_tail(200), timeout=LOG_TAIL_TIMEOUT)
        except Exception:
            return ""
        # Only this start's own output: an OOM line a run 20 minutes ago left in the tail
        # is not why this start failed.
        found = last_error(output_of_last_start(lines, _started_marker))
        return "" if found is None else found.line[:300]


def _started_marker(line: str) -> bool:
    """Guardian's own "started pid N" line in a supervised process's log."""
    return line.startswith(MARKER) and ": started pid " in line
