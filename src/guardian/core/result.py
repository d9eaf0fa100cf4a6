"""The one result type every check produces.

Checks return an :class:`Outcome` (what they saw); the engine wraps it into a
:class:`CheckResult` (who, when, how long). Keeping timing out of the checks means a
check cannot lie about its own duration, and a timed-out or crashed check still gets
a proper result.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

Value = float | int | str | bool | None


class Status(StrEnum):
    OK = "ok"
    DEGRADED = "degraded"
    FAILED = "failed"
    SKIPPED = "skipped"  # not applicable here (e.g. no GPU): never counts as a problem

    @property
    def severity(self) -> int:
        return _SEVERITY[self]


_SEVERITY = {Status.SKIPPED: 0, Status.OK: 0, Status.DEGRADED: 1, Status.FAILED: 2}


def worst(statuses: Iterable[Status]) -> Status:
    """The most severe status; OK for an empty input."""
    result = Status.OK
    for status in statuses:
        if status.severity > result.severity:
            result = status
    return result


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a check observed: a status, a human reason and measured values."""

    status: Status
    reason: str = ""
    values: Mapping[str, Value] = field(default_factory=dict)

    @classmethod
    def ok(cls, reason: str = "", **values: Value) -> Outcome:
        return cls(Status.OK, reason, values)

    @classmethod
    def degraded(cls, reason: str, **values: Value) -> Outcome:
        return cls(Status.DEGRADED, reason, values)

    @classmethod
    def failed(cls, reason: str, **values: Value) -> Outcome:
        return cls(Status.FAILED, reason, values)

    @classmethod
    def skipped(cls, reason: str, **values: Value) -> Outcome:
        return cls(Status.SKIPPED, reason, values)


@dataclass(frozen=True, slots=True)
class CheckResult:
    """One execution of one check of one target."""

    target: str
    check: str  # the check's name within its target (defaults to its kind)
    kind: str
    status: Status
    reason: str
    values: Mapping[str, Value]
    started: datetime  # wall clock, UTC
    finished: datetime  # wall clock, UTC
    duration: float  # seconds, from the monotonic clock
    # True while the target is in its startup phase (after Guardian's start or a restart,
    # until its first success or `startup_timeout`): failures then open no incident and
    # count toward no restart. Set by the engine.
    startup: bool = False
    # Monotonic time the check began (set by the engine). Decisions compare this, never the
    # wall-clock `started`, so a wall clock stepping back cannot hide a failure. None for
    # results built outside the engine (tests, the store).
    started_mono: float | None = None

    @property
    def ok(self) -> bool:
        return self.status in (Status.OK, Status.SKIPPED)

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "check": self.check,
            "kind": self.kind,
            "status": self.status.value,
            "reason": self.reason,
            "values": dict(self.values),
            "started": self.started.isoformat(),
            "finished": self.finished.isoformat(),
            "duration": round(self.duration, 6),
            "startup": self.startup,
        }
