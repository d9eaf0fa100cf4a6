"""The one result type every check produces.

Checks return an :class:`Outcome` (what they saw); the engine wraps it into a
:class:`CheckResult` (who, when, how long). Keeping timing out of the checks means a
check cannot lie about its own duration, and a timed-out or crashed check still gets
a proper result.
"""

from __future__ import annotations

import math
import re
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from functools import cached_property
from typing import Any, Final, Literal

Value = float | int | str | bool | None


class Condition(StrEnum):
    """A named failure a gentler action than a restart can fix (the remediation ladder's).

    A result carrying one is owned by the ladder: recovery feeds no liveness streak with it
    and the incident tracker does not escalate it as "recovery would have acted".
    """

    STUCK_RUNNING = "stuck_running"
    STUCK_PENDING = "stuck_pending"
    MEMORY_PRESSURE = "memory_pressure"


# A failing check's reason, in bounded classes for the metrics label: set by the check that
# knows why it failed (None: the engine's own class, "timeout" or "other", applies).
ReasonClass = Literal[
    "timeout",
    "connection",
    "http_status",
    "invalid_response",
    "queue_stuck",
    "threshold",
    "service",
    "other",
]
REASON_CLASSES: Final[tuple[ReasonClass, ...]] = typing.get_args(ReasonClass)


@dataclass(frozen=True)
class Reading:
    """One measurement a check kind declares: the API and the metrics iterate these.

    ``key`` is where the result's flat ``values`` (the stored and served JSON) keep it:
    ``{name}`` by default, ``{name}.{index}`` for a per-item reading (the GPU's own form
    ``gpu{index}.vram_used_mb`` is declared as such). ``index`` names the item a per-item
    reading is about (``path``, ``device``, ``gpu``); None for a single reading.
    """

    name: str
    unit: str  # "MiB", "GiB", "percent", "celsius", "s", "ms", "count", "bool", "text"
    index: str | None = None
    doc: str = ""
    key: str = ""
    # The Prometheus gauge it feeds ("" for none), in the gauge's unit: value * scale.
    metric: str = ""
    scale: float = 1.0
    # What the gauge shows when the check could not take it (None: no sample).
    default: float | None = None

    @cached_property
    def _pattern(self) -> re.Pattern[str]:
        template = self.key or ("{name}.{index}" if self.index else "{name}")
        head, sep, tail = template.replace("{name}", self.name).partition("{index}")
        # DOTALL: an index is whatever the check wrote (a path may hold any character).
        return re.compile(re.escape(head) + ("(.+)" if sep else "") + re.escape(tail) + r"\Z",
                          re.DOTALL)

    def of(self, values: Mapping[str, Value]) -> dict[str, Value]:
        """``{index: value}`` of this reading in ``values`` (``{"": value}`` when single),
        in key order; a reading the check could not take is simply absent."""
        if self.index is None and not self.key:
            return {"": values[self.name]} if self.name in values else {}
        pattern = self._pattern
        out: dict[str, Value] = {}
        for key, value in values.items():
            m = pattern.match(key)
            if m is not None:
                out[m.group(1) if m.groups() else ""] = value
        return out

    def numbers(self, values: Mapping[str, Value]) -> dict[str, float]:
        """Like :meth:`of`, keeping only finite numbers (a bool is not a number here)."""
        return {i: n for i, v in self.of(values).items() if (n := number(v)) is not None}

    def texts(self, values: Mapping[str, Value]) -> dict[str, str]:
        return {i: v for i, v in self.of(values).items() if isinstance(v, str)}

    def gauge(self, values: Mapping[str, Value]) -> dict[str, float]:
        """The gauge's samples by index: numbers scaled, a flag as 1/0, else the default."""
        out: dict[str, float] = {}
        for i, v in self.of(values).items():
            if self.unit == "bool":
                n = (1.0 if v else 0.0) if isinstance(v, bool) else None
            else:
                n = number(v)
            if n is not None:
                out[i] = n * self.scale
        if not out and self.default is not None and self.index is None:
            out[""] = self.default
        return out


def number(value: object) -> float | None:
    """A finite number, or None (bools are not numbers here)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    f = float(value)
    return f if math.isfinite(f) else None


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
    """What a check observed: a status, a human reason, measured values (under the keys
    its kind declares), a named condition when the ladder can handle it, and the reason's
    class when the check knows it."""

    status: Status
    reason: str = ""
    values: Mapping[str, Value] = field(default_factory=dict)
    condition: Condition | None = None
    reason_class: ReasonClass | None = None

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

    def tagged(
        self, *, condition: Condition | None = None, reason_class: ReasonClass | None = None
    ) -> Outcome:
        """This outcome with the ladder's condition and/or the reason's class set."""
        return Outcome(
            self.status, self.reason, self.values,
            condition if condition is not None else self.condition,
            reason_class if reason_class is not None else self.reason_class,
        )


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
    # The ladder's condition (see :class:`Condition`) and the reason's class, from the check.
    condition: Condition | None = None
    reason_class: ReasonClass | None = None

    @property
    def ok(self) -> bool:
        return self.status in (Status.OK, Status.SKIPPED)

    def __post_init__(self) -> None:
        # The stored and served shape (the API's and the store's JSON, reports) keeps the
        # condition among the values, as it always was; code reads the typed field.
        if self.condition is not None and "condition" not in self.values:
            values = {"condition": self.condition.value, **self.values}
            object.__setattr__(self, "values", values)

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
