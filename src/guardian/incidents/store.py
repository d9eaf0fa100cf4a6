"""The incident store: one SQLite file with results, recovery actions, incidents, notices.

Why synchronous, in the event loop: every write here is one tiny row in one short
transaction on a WAL database with ``synchronous=NORMAL``, which commits without an
fsync (WAL is synced at checkpoints) and takes tens of microseconds. A writer thread
with a queue would add hand-off, shutdown draining and a window of queued-but-unwritten
events a SIGKILL would lose; here a SIGKILL loses at most the transaction in flight and
SQLite's journal keeps the file consistent. One connection, owned by this object, used
from the event-loop thread only (the CLI uses its own Store instance in its own process;
WAL lets it read while Guardian writes).

Times are stored as fixed-width UTC ISO-8601 text so they sort as strings.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from guardian.config import Config
from guardian.events import RecoveryEvent
from guardian.result import CheckResult

IncidentStatus = Literal["open", "escalated", "resolved"]
OPEN_STATUSES: tuple[IncidentStatus, ...] = ("open", "escalated")


def ts(dt: datetime) -> str:
    """Fixed-width, sortable UTC text for a timezone-aware datetime."""
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC).isoformat(timespec="microseconds")


def parse_ts(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


# Ordered migrations: index i upgrades user_version i -> i+1. Never edit a shipped entry;
# append a new one.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE incidents (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        target TEXT NOT NULL,
        opened_at TEXT NOT NULL,
        escalated_at TEXT,
        resolved_at TEXT,
        severity TEXT NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('open', 'escalated', 'resolved')),
        summary TEXT NOT NULL DEFAULT '',
        failure_count INTEGER NOT NULL DEFAULT 0,
        flap_count INTEGER NOT NULL DEFAULT 0,
        report_path TEXT
    );
    CREATE INDEX incidents_status ON incidents(status, target);
    CREATE INDEX incidents_opened ON incidents(opened_at);
    CREATE TABLE results (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        incident_id INTEGER REFERENCES incidents(id) ON DELETE SET NULL,
        target TEXT NOT NULL,
        check_name TEXT NOT NULL,
        kind TEXT NOT NULL,
        status TEXT NOT NULL,
        reason TEXT NOT NULL,
        vals TEXT NOT NULL,
        started TEXT NOT NULL,
        finished TEXT NOT NULL,
        duration REAL NOT NULL
    );
    CREATE INDEX results_incident ON results(incident_id);
    CREATE INDEX results_finished ON results(finished);
    CREATE INDEX results_key ON results(target, check_name, id);
    CREATE TABLE recovery (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        incident_id INTEGER REFERENCES incidents(id) ON DELETE SET NULL,
        target TEXT NOT NULL,
        kind TEXT NOT NULL,
        time TEXT NOT NULL,
        attempt INTEGER NOT NULL,
        reason TEXT NOT NULL,
        detail TEXT NOT NULL,
        vals TEXT NOT NULL
    );
    CREATE INDEX recovery_incident ON recovery(incident_id);
    CREATE INDEX recovery_time ON recovery(time);
    CREATE TABLE notifications (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        incident_id INTEGER REFERENCES incidents(id) ON DELETE SET NULL,
        target TEXT NOT NULL,
        channel TEXT NOT NULL,
        transition TEXT NOT NULL,
        time TEXT NOT NULL,
        ok INTEGER NOT NULL,
        error TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX notifications_incident ON notifications(incident_id, transition);
    CREATE INDEX notifications_time ON notifications(time);
    """,
    # v2: what the report needs that must outlive the process: the log tail and system
    # snapshot captured at escalation.
    """
    CREATE TABLE artifacts (
        incident_id INTEGER NOT NULL REFERENCES incidents(id) ON DELETE CASCADE,
        name TEXT NOT NULL,
        captured_at TEXT NOT NULL,
        body TEXT NOT NULL,
        PRIMARY KEY (incident_id, name)
    );
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)


class StoreError(Exception):
    """The store file is unusable (corrupt, newer schema, unwritable)."""


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


class Store:
    """All persistent incident data. Open once; call :meth:`close` on shutdown."""

    def __init__(
        self,
        path: str | Path,
        *,
        retention_days: float = 30.0,
        max_events: int = 100_000,
        prune_every: int = 1000,
        now: Callable[[], datetime] | None = None,
    ) -> None:
        self.path = Path(path)
        self.retention = timedelta(days=retention_days)
        self.max_events = max_events
        self.prune_every = prune_every
        self._now = now or (lambda: datetime.now(UTC))
        self._writes = 0
        if str(path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            # isolation_level=None: we issue BEGIN/COMMIT ourselves, one per write.
            self._db = sqlite3.connect(str(path), isolation_level=None, timeout=10.0)
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.execute("PRAGMA busy_timeout=10000")
            self._migrate()
        except sqlite3.DatabaseError as e:
            raise StoreError(f"incident store {path}: {e}") from e

    @classmethod
    def from_config(cls, config: Config, now: Callable[[], datetime] | None = None) -> Store:
        """Open ``config.store_path`` with the config's retention settings."""
        return cls(
            config.store_path,
            retention_days=config.store.retention_days,
            max_events=config.store.max_events,
            now=now,
        )

    # ------------------------------------------------------------------ plumbing

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _migrate(self) -> None:
        version = int(self._db.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"incident store {self.path} has schema v{version}, newer than this "
                f"Guardian (v{SCHEMA_VERSION}); upgrade Guardian or use another store path"
            )
        for i in range(version, SCHEMA_VERSION):
            # executescript commits implicitly, so the migration and its version bump go
            # into one script wrapped in our own transaction.
            self._db.executescript(
                f"BEGIN IMMEDIATE;\n{MIGRATIONS[i]}\nPRAGMA user_version = {i + 1};\nCOMMIT;"
            )

    @property
    def schema_version(self) -> int:
        return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    def integrity_check(self) -> str:
        return str(self._db.execute("PRAGMA integrity_check").fetchone()[0])

    def _wrote(self) -> None:
        self._writes += 1
        if self.prune_every and self._writes % self.prune_every == 0:
            self.prune()

    # ------------------------------------------------------------------ events

    def add_result(self, result: CheckResult, incident_id: int | None = None) -> int:
        with self._tx() as db:
            cur = db.execute(
                "INSERT INTO results (incident_id, target, check_name, kind, status, reason,"
                " vals, started, finished, duration) VALUES (?,?,?,?,?,?,?,?,?,?)",
                (
                    incident_id,
                    result.target,
                    result.check,
                    result.kind,
                    str(result.status),
                    result.reason,
                    _dumps(result.values),
                    ts(result.started),
                    ts(result.finished),
                    float(result.duration),
                ),
            )
        self._wrote()
        return int(cur.lastrowid or 0)

    def add_recovery(self, event: RecoveryEvent, incident_id: int | None = None) -> int:
        with self._tx() as db:
            cur = db.execute(
                "INSERT INTO recovery (incident_id, target, kind, time, attempt, reason,"
                " detail, vals) VALUES (?,?,?,?,?,?,?,?)",
                (
                    incident_id,
                    event.target,
                    str(event.kind),
                    ts(event.time),
                    event.attempt,
                    event.reason,
                    event.detail,
                    _dumps(event.values),
                ),
            )
        self._wrote()
        return int(cur.lastrowid or 0)

    def add_notification(
        self,
        incident_id: int | None,
        target: str,
        channel: str,
        transition: str,
        time: datetime,
        ok: bool,
        error: str = "",
    ) -> int:
        with self._tx() as db:
            cur = db.execute(
                "INSERT INTO notifications (incident_id, target, channel, transition, time,"
                " ok, error) VALUES (?,?,?,?,?,?,?)",
                (incident_id, target, channel, transition, ts(time), int(ok), error[:2000]),
            )
        self._wrote()
        return int(cur.lastrowid or 0)

    def last_statuses(self) -> dict[tuple[str, str], str]:
        """The last stored status of every (target, check): where change detection resumes."""
        rows = self._db.execute(
            "SELECT target, check_name, status FROM results WHERE id IN"
            " (SELECT MAX(id) FROM results GROUP BY target, check_name)"
        ).fetchall()
        return {(r["target"], r["check_name"]): r["status"] for r in rows}

    def results(
        self, incident_id: int | None = None, target: str | None = None, limit: int = 10_000
    ) -> list[StoredResult]:
        """Results of one incident (or one target), oldest first."""
        where, args = _filters(incident_id=incident_id, target=target)
        rows = self._db.execute(
            f"SELECT * FROM (SELECT * FROM results {where} ORDER BY id DESC LIMIT ?) ORDER BY id",
            (*args, limit),
        ).fetchall()
        return [_result(r) for r in rows]

    def latest_results(self, kinds: Sequence[str]) -> list[StoredResult]:
        """The newest stored result of each check of the given kinds."""
        marks = ",".join("?" * len(kinds))
        rows = self._db.execute(
            f"SELECT * FROM results WHERE id IN (SELECT MAX(id) FROM results WHERE kind IN"
            f" ({marks}) GROUP BY target, check_name) ORDER BY target, check_name",
            tuple(kinds),
        ).fetchall()
        return [_result(r) for r in rows]

    def recovery_events(
        self, incident_id: int | None = None, target: str | None = None, limit: int = 10_000
    ) -> list[StoredRecovery]:
        where, args = _filters(incident_id=incident_id, target=target)
        rows = self._db.execute(
            f"SELECT * FROM (SELECT * FROM recovery {where} ORDER BY id DESC LIMIT ?) ORDER BY id",
            (*args, limit),
        ).fetchall()
        return [
            StoredRecovery(
                id=r["id"],
                incident_id=r["incident_id"],
                target=r["target"],
                kind=r["kind"],
                time=_dt(r["time"]),
                attempt=r["attempt"],
                reason=r["reason"],
                detail=r["detail"],
                values=_loads(r["vals"]),
            )
            for r in rows
        ]

    def notifications(self, incident_id: int | None = None) -> list[NotificationAttempt]:
        where, args = _filters(incident_id=incident_id)
        rows = self._db.execute(f"SELECT * FROM notifications {where} ORDER BY id", args).fetchall()
        return [
            NotificationAttempt(
                id=r["id"],
                incident_id=r["incident_id"],
                target=r["target"],
                channel=r["channel"],
                transition=r["transition"],
                time=_dt(r["time"]),
                ok=bool(r["ok"]),
                error=r["error"],
            )
            for r in rows
        ]

    def notified(self, incident_id: int, transition: str) -> bool:
        """Whether a message for this transition of this incident was already attempted."""
        row = self._db.execute(
            "SELECT 1 FROM notifications WHERE incident_id = ? AND transition = ? LIMIT 1",
            (incident_id, transition),
        ).fetchone()
        return row is not None

    # ------------------------------------------------------------------ incidents

    def open_incident(
        self, target: str, opened_at: datetime, severity: str, summary: str
    ) -> Incident:
        with self._tx() as db:
            cur = db.execute(
                "INSERT INTO incidents (target, opened_at, severity, status, summary)"
                " VALUES (?,?,?,?,?)",
                (target, ts(opened_at), severity, "open", summary),
            )
        self._wrote()
        incident = self.incident(int(cur.lastrowid or 0))
        assert incident is not None
        return incident

    def adopt_recovery(self, target: str, incident_id: int, since: datetime) -> int:
        """Link the target's unlinked recovery events since ``since`` to an incident.

        A supervised process's exit is usually seen before the check that fails because
        of it; this puts that exit into the incident it caused.
        """
        with self._tx() as db:
            n = db.execute(
                "UPDATE recovery SET incident_id = ? WHERE target = ? AND incident_id IS NULL"
                " AND time >= ?",
                (incident_id, target, ts(since)),
            ).rowcount
        return int(n)

    def update_incident(self, incident_id: int, **fields: Any) -> Incident:
        """Set columns of one incident (datetimes are converted); returns the new row."""
        allowed = {
            "escalated_at",
            "resolved_at",
            "severity",
            "status",
            "summary",
            "failure_count",
            "flap_count",
            "report_path",
        }
        bad = set(fields) - allowed
        if bad:
            raise ValueError(f"unknown incident fields: {sorted(bad)}")
        values = [ts(v) if isinstance(v, datetime) else v for v in fields.values()]
        sets = ", ".join(f"{k} = ?" for k in fields)
        with self._tx() as db:
            db.execute(f"UPDATE incidents SET {sets} WHERE id = ?", (*values, incident_id))
        incident = self.incident(incident_id)
        if incident is None:
            raise KeyError(incident_id)
        return incident

    def incident(self, incident_id: int) -> Incident | None:
        row = self._db.execute("SELECT * FROM incidents WHERE id = ?", (incident_id,)).fetchone()
        return None if row is None else _incident(row)

    def incidents(self, *, include_resolved: bool = True, limit: int = 1000) -> list[Incident]:
        """Newest first."""
        where = "" if include_resolved else "WHERE status IN ('open', 'escalated')"
        rows = self._db.execute(
            f"SELECT * FROM incidents {where} ORDER BY id DESC LIMIT ?", (limit,)
        ).fetchall()
        return [_incident(r) for r in rows]

    def open_incidents(self) -> list[Incident]:
        return self.incidents(include_resolved=False)

    # ------------------------------------------------------------------ artifacts

    def put_artifact(self, incident_id: int, name: str, body: str, captured_at: datetime) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO artifacts (incident_id, name, captured_at, body)"
                " VALUES (?,?,?,?)",
                (incident_id, name, ts(captured_at), body),
            )

    def artifact(self, incident_id: int, name: str) -> tuple[datetime, str] | None:
        row = self._db.execute(
            "SELECT captured_at, body FROM artifacts WHERE incident_id = ? AND name = ?",
            (incident_id, name),
        ).fetchone()
        return None if row is None else (_dt(row["captured_at"]), row["body"])

    # ------------------------------------------------------------------ retention

    def counts(self) -> dict[str, int]:
        return {
            t: int(self._db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0])
            for t in ("incidents", "results", "recovery", "notifications", "artifacts")
        }

    def prune(self, now: datetime | None = None) -> dict[str, int]:
        """Drop data older than the retention period and cap each event table.

        Rows of open incidents are kept whatever their age (a report still needs them).
        Each event table keeps at most ``max_events`` newest rows. Uses the time and id
        indexes, so it is cheap enough to run on startup and every ``prune_every`` writes.
        """
        cutoff = ts((now or self._now()) - self.retention)
        keep_open = "(SELECT id FROM incidents WHERE status IN ('open', 'escalated'))"
        removed: dict[str, int] = {}
        with self._tx() as db:
            removed["incidents"] = db.execute(
                "DELETE FROM incidents WHERE status = 'resolved' AND resolved_at < ?", (cutoff,)
            ).rowcount
            for table, col in (
                ("results", "finished"),
                ("recovery", "time"),
                ("notifications", "time"),
            ):
                n = db.execute(
                    f"DELETE FROM {table} WHERE {col} < ? AND (incident_id IS NULL"
                    f" OR incident_id NOT IN {keep_open})",
                    (cutoff,),
                ).rowcount
                n += db.execute(
                    f"DELETE FROM {table} WHERE id <= (SELECT id FROM {table} ORDER BY id DESC"
                    f" LIMIT 1 OFFSET ?) AND (incident_id IS NULL OR incident_id NOT IN"
                    f" {keep_open})",
                    (self.max_events,),
                ).rowcount
                removed[table] = n
        return removed


def _filters(**kw: Any) -> tuple[str, tuple[Any, ...]]:
    cols = {"incident_id": "incident_id", "target": "target"}
    parts = [f"{cols[k]} = ?" for k, v in kw.items() if v is not None]
    args = tuple(v for v in kw.values() if v is not None)
    return ("WHERE " + " AND ".join(parts) if parts else ""), args


def _dumps(values: Mapping[str, Any]) -> str:
    return json.dumps(dict(values), default=str, sort_keys=True)


def _loads(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _dt(text: str) -> datetime:
    return datetime.fromisoformat(text)


def _result(r: sqlite3.Row) -> StoredResult:
    return StoredResult(
        id=r["id"],
        incident_id=r["incident_id"],
        target=r["target"],
        check=r["check_name"],
        kind=r["kind"],
        status=r["status"],
        reason=r["reason"],
        values=_loads(r["vals"]),
        started=_dt(r["started"]),
        finished=_dt(r["finished"]),
        duration=r["duration"],
    )


def _incident(r: sqlite3.Row) -> Incident:
    return Incident(
        id=r["id"],
        target=r["target"],
        opened_at=_dt(r["opened_at"]),
        escalated_at=parse_ts(r["escalated_at"]),
        resolved_at=parse_ts(r["resolved_at"]),
        severity=r["severity"],
        status=r["status"],
        summary=r["summary"],
        failure_count=r["failure_count"],
        flap_count=r["flap_count"],
        report_path=r["report_path"],
    )
