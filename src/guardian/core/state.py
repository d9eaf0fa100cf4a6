"""The one state object everything else reads: latest results and short histories.

The engine writes; the API, metrics, recovery and the CLI read. Reads never run checks,
so ``/api/health`` answers from memory in microseconds.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Literal, Protocol

from guardian.core.events import EventBus
from guardian.core.result import CheckResult, Status, worst

Health = Literal["healthy", "degraded", "unhealthy"]


class CheckShape(Protocol):
    @property
    def enabled(self) -> bool: ...


class TargetShape(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def critical(self) -> bool: ...
    @property
    def checks(self) -> Sequence[CheckShape]: ...


class StackShape(Protocol):
    """What the state needs of the config: the targets, which are critical and which will
    report. A Protocol, so core stays below config (a ``Config`` is one)."""

    @property
    def targets(self) -> Sequence[TargetShape]: ...


class State:
    def __init__(
        self, config: StackShape, bus: EventBus | None = None, history: int = 60
    ) -> None:
        self.config = config
        self.bus = bus or EventBus()
        self._history_len = history
        self._latest: dict[tuple[str, str], CheckResult] = {}
        self._history: dict[tuple[str, str], deque[CheckResult]] = {}
        self._critical = {t.name: t.critical for t in config.targets}
        # Targets that will report: until each has a result, the stack is not known to be up.
        self._expected = [t.name for t in config.targets if any(c.enabled for c in t.checks)]
        self.started_at: datetime | None = None
        # Guardian's own trouble (damaged store, overload, unwritable logs), keyed by area.
        # Shown in /api/health under `guardian`; never a verdict on a target.
        self._problems: dict[str, str] = {}

    def set_problem(self, key: str, message: str) -> None:
        """Report (or update) a problem of Guardian itself, e.g. ``"store"``."""
        self._problems[key] = message

    def clear_problem(self, key: str) -> None:
        self._problems.pop(key, None)

    @property
    def problems(self) -> dict[str, str]:
        """A copy: readers may be on another thread than the writer."""
        return dict(self._problems)

    def record(self, result: CheckResult) -> None:
        key = (result.target, result.check)
        self._latest[key] = result
        hist = self._history.get(key)
        if hist is None:
            hist = self._history[key] = deque(maxlen=self._history_len)
        hist.append(result)
        self.bus.publish(result)

    def latest(self, target: str, check: str) -> CheckResult | None:
        return self._latest.get((target, check))

    def results(self, target: str | None = None) -> list[CheckResult]:
        """Latest result of every check (of one target), in config order."""
        # list() copies in one C call, so a reader on the API thread never iterates a
        # dict the engine is inserting into.
        return [r for r in list(self._latest.values()) if target is None or r.target == target]

    def history(self, target: str, check: str) -> list[CheckResult]:
        return list(self._history.get((target, check), ()))

    def target_status(self, target: str) -> Status:
        return worst(r.status for r in self.results(target))

    def overall(self) -> Health:
        return aggregate(self.results(), self._critical, self._expected)


def aggregate(
    results: Iterable[CheckResult], critical: dict[str, bool], expected: Iterable[str] = ()
) -> Health:
    """Stack health: a critical target failing is unhealthy; anything else off is degraded.

    A target still starting is not up, but not failing either: a failure in its startup
    phase (even of a critical target) and an ``expected`` target without any result yet
    make the stack degraded, never healthy and never unhealthy.
    """
    health: Health = "healthy"
    seen: set[str] = set()
    for r in results:
        seen.add(r.target)
        if r.status is Status.FAILED and not r.startup and critical.get(r.target, True):
            return "unhealthy"
        if r.status in (Status.FAILED, Status.DEGRADED):
            health = "degraded"
    if health == "healthy" and any(t not in seen for t in expected):
        health = "degraded"
    return health
