"""What the incident store holds, as typed records, and their SQLite row forms.

Apart from :mod:`guardian.incidents.store` (the queries and the one in-memory copy of the
open incidents) so readers of incidents (reports, the CLI, the timeline) need the records
without the store's machinery. Times are fixed-width UTC ISO-8601 text so they sort as
strings.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

IncidentStatus = Literal["open", "escalated", "resolved"]
OPEN_STATUSES: tuple[IncidentStatus, ...] = ("open", "escalated")


def ts(dt: datetime) -> str:
    """Fixed-width, sortable UTC text for a timezone-aware datetime."""
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC).isoformat(timespec="microseconds")


def parse_ts(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


@dataclass(frozen=True, slots=True)
class Incident:
    id: int
    target: str
    opened_at: datetime
    escalated_at: datetime | None
    resolved_at: datetime | None
    severity: str
    status: IncidentStatus
    summary: str
    failure_count: int
    flap_count: int
    report_path: str | None

    @property
    def is_open(self) -> bool:
        return self.status in OPEN_STATUSES


@dataclass(frozen=True, slots=True)
class StoredResult:
    id: int
    incident_id: int | None
    target: str
    check: str
    kind: str
    status: str
    reason: str
    values: dict[str, Any]
    started: datetime
    finished: datetime
    duration: float


@dataclass(frozen=True, slots=True)
class StoredRecovery:
    id: int
    incident_id: int | None
    target: str
    kind: str
    time: datetime
    attempt: int
    reason: str
    detail: str
    values: dict[str, Any]


@dataclass(frozen=True, slots=True)
class NotificationAttempt:
    id: int
    incident_id: int | None
    target: str
    channel: str
    transition: str
    time: datetime
    ok: bool
    error: str


def incident_row(i: Incident) -> tuple[Any, ...]:
    return (
        i.id,
        i.target,
        ts(i.opened_at),
        None if i.escalated_at is None else ts(i.escalated_at),
        None if i.resolved_at is None else ts(i.resolved_at),
        i.severity,
        i.status,
        i.summary,
        i.failure_count,
        i.flap_count,
        i.report_path,
    )


def dumps(values: Mapping[str, Any]) -> str:
    return json.dumps(dict(values), default=str, sort_keys=True)


def loads(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def dt(text: str) -> datetime:
    return datetime.fromisoformat(text)


def result_from_row(r: sqlite3.Row) -> StoredResult:
    return StoredResult(
        id=r["id"],
        incident_id=r["incident_id"],
        target=r["target"],
        check=r["check_name"],
        kind=r["kind"],
        status=r["status"],
        reason=r["reason"],
        values=loads(r["vals"]),
        started=dt(r["started"]),
        finished=dt(r["finished"]),
        duration=r["duration"],
    )


def recovery_from_row(r: sqlite3.Row) -> StoredRecovery:
    return StoredRecovery(
        id=r["id"],
        incident_id=r["incident_id"],
        target=r["target"],
        kind=r["kind"],
        time=dt(r["time"]),
        attempt=r["attempt"],
        reason=r["reason"],
        detail=r["detail"],
        values=loads(r["vals"]),
    )


def incident_from_row(r: sqlite3.Row) -> Incident:
    return Incident(
        id=r["id"],
        target=r["target"],
        opened_at=dt(r["opened_at"]),
        escalated_at=parse_ts(r["escalated_at"]),
        resolved_at=parse_ts(r["resolved_at"]),
        severity=r["severity"],
        status=r["status"],
        summary=r["summary"],
        failure_count=r["failure_count"],
        flap_count=r["flap_count"],
        report_path=r["report_path"],
    )
