"""The restart rules for one target: a pure, clock-driven state machine with named states.

:class:`RestartPolicy` does no I/O and starts no tasks, so every rule (cooldown, backoff,
breaker, grace, stable reset, liveness streaks) is tested in microseconds with explicit
times. Its phase is one :class:`RecoveryState`, in the spirit of Supervisor's process
states, and every change of it goes through :meth:`RestartPolicy._to`: the one place that
checks a transition is allowed and logs it, so "how did it get into BREAKER_OPEN?" has
one answer in the debug log.

The facts beside the state are evidence, not phase: ``healthy_since`` (when the current
healthy run began; it keeps running through a backoff or an open breaker, because the
breaker closes after ``stable_period`` of it), the per-check failure ``streaks``, the
attempt times of the window and the pending reason of a backoff.

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

import logging
import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from guardian.checks.registry import spec
from guardian.config.schema import RecoveryConfig
from guardian.core.result import Status
from guardian.recovery.breakers import BreakerRecord

log = logging.getLogger("guardian.recovery.policy")

# No decision waits longer than this, whatever the config's numbers multiply to: keeps
# every deadline finite and every wall-clock rendering of it inside datetime's range.
MAX_DELAY = 365 * 86400.0


class RecoveryState(StrEnum):
    """What recovery knows of the target and is doing about it."""

    UNKNOWN = "unknown"  # no evidence yet (before the first start or result)
    STARTING = "starting"  # (re)started, not yet proven healthy
    HEALTHY = "healthy"  # a healthy run is going on (``healthy_since``)
    FAILING = "failing"  # a failure ended the healthy run; streaks may be counting
    BACKOFF = "backoff"  # a restart is wanted but not allowed before ``next_allowed_at``
    RESTARTING = "restarting"  # a restart is being executed (never two at once)
    BREAKER_OPEN = "breaker_open"  # attempts exhausted: no restarts until a reset


# The states a failure or a health observation may move between on their own; the others
# are left only by a decision (begin, finished, reset, a cleared backoff).
_OBSERVED = frozenset(
    {RecoveryState.UNKNOWN, RecoveryState.STARTING, RecoveryState.HEALTHY, RecoveryState.FAILING}
)
_ALLOWED: dict[RecoveryState, frozenset[RecoveryState]] = {
    RecoveryState.UNKNOWN: _OBSERVED
    | {RecoveryState.BACKOFF, RecoveryState.RESTARTING, RecoveryState.BREAKER_OPEN},
    RecoveryState.STARTING: _OBSERVED
    | {RecoveryState.BACKOFF, RecoveryState.RESTARTING, RecoveryState.BREAKER_OPEN},
    RecoveryState.HEALTHY: _OBSERVED
    | {RecoveryState.BACKOFF, RecoveryState.RESTARTING, RecoveryState.BREAKER_OPEN},
    RecoveryState.FAILING: _OBSERVED
    | {RecoveryState.BACKOFF, RecoveryState.RESTARTING, RecoveryState.BREAKER_OPEN},
    RecoveryState.BACKOFF: _OBSERVED
    | {RecoveryState.RESTARTING, RecoveryState.BREAKER_OPEN},
    RecoveryState.RESTARTING: frozenset(
        {RecoveryState.STARTING, RecoveryState.HEALTHY, RecoveryState.FAILING}
    ),
    RecoveryState.BREAKER_OPEN: _OBSERVED | {RecoveryState.RESTARTING},
}


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
    """The restart rules for one target; see the module docstring."""

    def __init__(
        self, cfg: RecoveryConfig, liveness: set[str] | None = None, *, name: str = ""
    ) -> None:
        self.cfg = cfg
        self.name = name  # the target, for the transition log only
        self.liveness = set(liveness or ())  # names of checks with `liveness: true`
        self.state = RecoveryState.UNKNOWN
        self.attempt_times: list[float] = []  # monotonic
        self.last_restart: float | None = None  # monotonic start of the last attempt
        # Start of the last restart of any kind, manual ones included: what people are
        # shown as "last restart" (last_restart above times the backoff, manual ones not).
        self.last_begun: float | None = None
        self.started_at: float | None = None  # end of the last (re)start: grace starts here
        self.pending_reason: str | None = None  # why, while in BACKOFF
        self.streaks: dict[str, int] = {}
        self.healthy_since: float | None = None
        # The condition (memory_pressure...) the counted restarts were for: a result that
        # still names it is no health, so the breaker never closes on it.
        self.restart_condition: str | None = None

    # -------------------------------------------------------------- the one choke point

    def _to(self, state: RecoveryState, why: str) -> None:
        """Every state change goes through here: checked against the table, logged."""
        old = self.state
        if old is state:
            return
        if state not in _ALLOWED[old]:
            log.error(
                "%s: unexpected recovery transition %s -> %s (%s)",
                self.name,
                old.value,
                state.value,
                why,
                extra={"event": "recovery_transition_invalid", "target": self.name},
            )
        self.state = state
        log.debug(
            "%s: %s -> %s (%s)",
            self.name,
            old.value,
            state.value,
            why,
            extra={"event": "recovery_transition", "target": self.name},
        )

    def _observed(self, state: RecoveryState, why: str) -> None:
        """An observation moves the state only while no decision holds it."""
        if self.state in _OBSERVED:
            self._to(state, why)

    def _settle(self, why: str) -> None:
        """Leave a decision state for what the evidence says."""
        if self.healthy_since is not None:
            self._to(RecoveryState.HEALTHY, why)
        elif self.consecutive_failures > 0:
            self._to(RecoveryState.FAILING, why)
        else:
            self._to(RecoveryState.STARTING, why)

    @property
    def in_progress(self) -> bool:
        return self.state is RecoveryState.RESTARTING

    @property
    def breaker_open(self) -> bool:
        return self.state is RecoveryState.BREAKER_OPEN

    # -------------------------------------------------------------- observations

    @property
    def consecutive_failures(self) -> int:
        return max(self.streaks.values(), default=0)

    def in_grace(self, now: float) -> bool:
        return self.started_at is not None and now - self.started_at < self.cfg.grace_period

    def _unhealthy(self, state: RecoveryState, why: str) -> None:
        self.healthy_since = None
        self._observed(state, why)

    def observe_check(
        self,
        check: str,
        kind: str,
        status: Status,
        now: float,
        *,
        owned: bool = False,
        startup: bool = False,
        condition: str | None = None,
    ) -> str | None:
        """Feed one check result; returns a restart reason when one is now needed.

        ``owned``: the failure names a condition the remediation ladder handles (a stuck
        prompt, memory pressure). It ends a healthy run but feeds no liveness streak: the
        ladder tries gentler actions first and asks for a restart itself when they fail.
        ``startup``: the service is booting (its startup phase); a failure says nothing yet.
        ``condition``: the condition the result names, if any. While it is the one the
        restarts were for, even a DEGRADED result of it is no health.
        """
        if status == Status.SKIPPED:
            return None
        if condition is not None and condition == self.restart_condition:
            self._unhealthy(RecoveryState.FAILING, f"{check}: {condition} goes on")
            return None
        if startup and status == Status.FAILED:
            self._unhealthy(RecoveryState.STARTING, f"{check} failed while booting")
            return None
        if owned and status == Status.FAILED:
            self._unhealthy(RecoveryState.FAILING, f"{check}: a condition the ladder owns")
            return None
        is_service = spec(kind).service_state
        if not is_service and check not in self.liveness:
            return None
        if status != Status.FAILED:
            self.streaks[check] = 0
            if self.pending_reason is not None and not self.pending_reason.startswith("exit"):
                self.pending_reason = None  # recovered on its own while we waited
                if self.state is RecoveryState.BACKOFF:
                    self._settle(f"{check} passed while waiting to restart")
            if self.healthy_since is None and self.consecutive_failures == 0:
                self.healthy_since = now
                self._observed(RecoveryState.HEALTHY, f"{check} passed")
            return None
        self._unhealthy(RecoveryState.FAILING, f"{check} failed")
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
        self._unhealthy(RecoveryState.FAILING, f"exited with code {code}")
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
            self.pending_reason = None
            self._to(RecoveryState.BREAKER_OPEN, f"{len(self.attempt_times)} attempts: {reason}")
            return Decision(Action.BREAKER_OPEN, attempt=len(self.attempt_times), reason=reason)
        allowed = self.next_allowed_at(now)
        if allowed is not None and now < allowed:
            self.pending_reason = reason
            self._to(RecoveryState.BACKOFF, reason)
            return Decision(Action.WAIT, at=allowed, reason=reason)
        return Decision(Action.RESTART, attempt=len(self.attempt_times) + 1, reason=reason)

    def begin(self, now: float, *, counted: bool = True) -> None:
        self.pending_reason = None
        self.healthy_since = None
        self.streaks.clear()
        self._to(RecoveryState.RESTARTING, "restart begins")
        self.last_begun = now
        if counted:
            self.attempt_times.append(now)
            self.last_restart = now

    def finished(self, now: float) -> None:
        self.started_at = now
        if self.in_progress:
            self._settle("restart finished")

    def started(self, now: float) -> None:
        """The service was (first) started outside a restart: grace applies."""
        self.started_at = now
        self._observed(RecoveryState.STARTING, "started")

    def running(self, now: float) -> None:
        """The service reported RUNNING after a (re)start: a healthy run begins.

        Targets without liveness checks only ever send exit events, so without this their
        attempt counter could never be cleared by a stable run. A failed check ends the run.
        """
        if self.healthy_since is None:
            self.healthy_since = now
            self._observed(RecoveryState.HEALTHY, "running")

    def reset(self) -> None:
        """Close the breaker and forget attempts (manual restart or stable again)."""
        self.attempt_times.clear()
        self.pending_reason = None
        self.restart_condition = None
        self.streaks.clear()
        if self.state in (RecoveryState.BREAKER_OPEN, RecoveryState.BACKOFF):
            self._settle("reset")

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
        if rec.breaker_open:
            self._to(RecoveryState.BREAKER_OPEN, "restored from the breaker store")
        elif self.breaker_open:
            self._settle("restored closed")
        self.prune(mono_now)


def _power(base: float, exp: int) -> float:
    """``base ** exp`` that saturates at infinity instead of raising OverflowError."""
    try:
        return float(base**exp)
    except OverflowError:
        return math.inf
