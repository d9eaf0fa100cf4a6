"""The startup phase: a booting service is not a failing one (like Kubernetes' startupProbe).

After Guardian's start and after each (re)start of a target, the results of the checks
that talk to the service carry ``startup=True`` until the first success (OK or DEGRADED)
of any of them, or until ``startup_timeout`` passes: like a startupProbe, one success
says the service is up, and from then on every failure counts. Recovery and incidents ignore failed
startup results, so a 12 s ComfyUI boot opens no incident and triggers no restart. While a
check is in its phase the engine runs it every ``startup_probe_interval`` seconds, so a
recovered service is seen about a second after it answers, not one full interval later.

Host-level checks (disk, memory, GPU, the service's own state) never get a phase: a full
disk or a stopped service is not booting. The phase is driven by events recovery already
publishes (``restart_started`` begins it, ``restart_failed`` ends it: a start that died is
not booting), so the engine never has to import recovery.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from guardian.checks.registry import spec
from guardian.config.schema import Config
from guardian.core.clock import Clock
from guardian.core.events import Event, EventBus, RecoveryEvent, RecoveryKind
from guardian.core.result import CheckResult, Status

MIN_PROBE_INTERVAL = 0.1  # seconds: however small the config, a booting service is not hammered
_PASSED = (Status.OK, Status.DEGRADED)


def guards_startup(kind: str) -> bool:
    """Whether a check of this kind judges the service itself (and so has a phase)."""
    return spec(kind).startup_phase


@dataclass
class _Phase:
    deadline: float  # monotonic
    pending: set[str] = field(default_factory=set)  # the checks the phase applies to


class StartupPhases:
    """Per-target startup phases; the engine asks it, recovery's events drive it."""

    def __init__(self, config: Config, clock: Clock) -> None:
        self.clock = clock
        self._timeout = {t.name: t.recovery.startup_timeout for t in config.targets}
        self._probe = {t.name: t.recovery.startup_probe_interval for t in config.targets}
        self._checks = {
            t.name: {c.check_name for c in t.checks if c.enabled and guards_startup(c.kind)}
            for t in config.targets
        }
        self._phases: dict[str, _Phase] = {}
        self._timed_out: dict[str, set[str]] = {}  # ran out without a success, until one
        self._wakers: list[Callable[[str], None]] = []

    # ------------------------------------------------------------------ driving

    def begin(self, target: str) -> None:
        """A (re)start of ``target`` began: its checks are in startup again."""
        timeout = self._timeout.get(target, 0.0)
        checks = self._checks.get(target, set())
        if timeout <= 0 or not checks:
            return
        self._phases[target] = _Phase(self.clock.monotonic() + timeout, set(checks))
        self._timed_out.pop(target, None)
        for wake in list(self._wakers):
            wake(target)

    def begin_all(self) -> None:
        """Guardian itself starts: every target may be booting."""
        for target in self._checks:
            self.begin(target)

    def already_up(self, target: str, seconds: float) -> None:
        """``target`` was found running for ``seconds`` (an adopted process): its boot, if
        any, began back then, so the phase ends that much sooner. A process up longer than
        ``startup_timeout`` is past booting, and its failures count at once."""
        phase = self._phases.get(target)
        if phase is None:
            return
        left = self._timeout.get(target, 0.0) - max(0.0, seconds)
        if left <= 0:
            self._phases.pop(target, None)
        else:
            phase.deadline = min(phase.deadline, self.clock.monotonic() + left)

    def end(self, target: str) -> None:
        """The start failed (the process died): failures count from now on."""
        self._phases.pop(target, None)

    def attach(self, bus: EventBus) -> Callable[[], None]:
        """Follow recovery's events on ``bus``; returns the unsubscribe function."""
        return bus.subscribe(self._on_event)

    def add_waker(self, wake: Callable[[str], None]) -> None:
        """``wake(target)`` is called when a phase begins (the engine reschedules)."""
        self._wakers.append(wake)

    def _on_event(self, event: Event) -> None:
        if not isinstance(event, RecoveryEvent):
            return
        if event.kind is RecoveryKind.RESTART_STARTED:
            self.begin(event.target)
        elif event.kind is RecoveryKind.RESTART_FAILED:
            self.end(event.target)

    # ------------------------------------------------------------------ asking

    def _phase(self, target: str) -> _Phase | None:
        phase = self._phases.get(target)
        if phase is not None and self.clock.monotonic() >= phase.deadline:
            del self._phases[target]
            if phase.pending:
                self._timed_out[target] = set(phase.pending)
            return None
        return phase

    def active(self, target: str, check: str) -> bool:
        """Whether ``check`` of ``target`` is still in its startup phase now."""
        phase = self._phase(target)
        return phase is not None and check in phase.pending

    def in_startup(self, target: str) -> bool:
        """Whether ``target`` is in its startup phase (for status displays)."""
        phase = self._phase(target)
        return phase is not None and bool(phase.pending)

    def probe_interval(self, target: str, check: str) -> float | None:
        """The short period to run ``check`` at now, or None (its own interval)."""
        if not self.active(target, check):
            return None
        return max(self._probe.get(target, 1.0), MIN_PROBE_INTERVAL)

    def timed_out(self, target: str, check: str) -> float | None:
        """startup_timeout when ``check``'s phase ran out without a success, else None."""
        self._phase(target)
        if check in self._timed_out.get(target, ()):
            return self._timeout.get(target)
        return None

    def observe(self, result: CheckResult) -> None:
        """A success of a check that talks to the service ends the target's phase (and
        the timed-out note)."""
        if result.status not in _PASSED:
            return
        phase = self._phases.get(result.target)
        if phase is not None and result.check in phase.pending:
            del self._phases[result.target]  # it answers: the service is up
        if result.check in self._checks.get(result.target, ()):
            self._timed_out.pop(result.target, None)
