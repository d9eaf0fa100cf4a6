"""The incident store: results, recovery actions, incidents, notices in Guardian's SQLite file.

A component of the one file :mod:`guardian.store.db` owns (its tables and migrations:
:mod:`guardian.incidents.migrations`; the records it returns:
:mod:`guardian.incidents.records`; the timeline view: :mod:`guardian.incidents.timeline`;
what waits in memory for the file, and how it gets there: :mod:`guardian.incidents.pending`).

Why off the event loop: every write here is one tiny row in one short transaction on a
WAL database (``synchronous=NORMAL``: no fsync per commit), but a file locked by another
process, a full or hung disk would make it wait (the busy timeout), and a wait on the loop
is a late check or a late restart. So in the daemon every write is a job for the
Database's writer thread (:meth:`Database.submit`: in order, bounded, never waited for),
and what the loop must see at once lives in memory: the open incidents, new ids (from the
highest id this process has seen). The price is a window of queued, unwritten event rows
a SIGKILL loses (milliseconds; SQLite's journal keeps the file consistent). Reads go
through the Database's per-thread read-only connections (:meth:`Database.snapshot`), so
they never wait for the writer; a reader that needs what was queued (the report) waits
for :meth:`Store.settled` first, off the loop. Without a writer thread (the CLI, tools)
every write is done at once, as before.

When the store cannot write (disk full) or its file is replaced (damage found mid-run),
incidents are what must not get lost: the open ones are kept in memory too, a write that
fails leaves them marked unsaved, and they are written (with their ids) as soon as a write
works or the fresh file exists. Event rows (results, recovery actions, notifications,
artifacts) that cannot be written are dropped and counted: supervising goes on.

Times are stored as fixed-width UTC ISO-8601 text so they sort as strings.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from guardian.config.schema import Config
from guardian.core.events import RecoveryEvent
from guardian.core.result import CheckResult
from guardian.incidents.migrations import INCIDENTS, MIGRATIONS, SCHEMA_VERSION
from guardian.incidents.pending import PendingWrites
from guardian.incidents.records import (
    Incident,
    IncidentStatus,
    NotificationAttempt,
    StoredRecovery,
    StoredResult,
    dt,
    dumps,
    incident_from_row,
    recovery_from_row,
    result_from_row,
    ts,
)
from guardian.store.db import Database, StoreError, StoreUnavailable

log = logging.getLogger("guardian.incidents.store")

__all__ = [
    "INCIDENTS",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "Incident",
    "IncidentStatus",
    "Store",
    "StoreError",
    "StoredRecovery",
    "StoredResult",
]


class Store(PendingWrites):
    """All persistent incident data. Open once; call :meth:`close` on shutdown.

    ``path`` is Guardian's shared :class:`~guardian.db.Database` (the daemon) or a file
    path (the CLI, tools, tests): then the store opens and owns a strict Database that
    raises :class:`StoreError` for a damaged or newer file instead of replacing it.
    """

    def __init__(
        self,
        path: str | Path | Database,
        *,
        retention_days: float = 30.0,
        max_events: int = 100_000,
        prune_every: int = 1000,
        now: Callable[[], datetime] | None = None,
    ) -> None:
        self._owns = not isinstance(path, Database)
        db = path if isinstance(path, Database) else Database(path, components=(INCIDENTS,))
        super().__init__(db, prune_every)
        self.path = self.db.path
        self.retention = timedelta(days=retention_days)
        self.max_events = max_events
        self._now = now or (lambda: datetime.now(UTC))
        try:
            self.db.register(INCIDENTS, self._rewrite_live)
            for incident in self._read_incidents(include_resolved=False, limit=1_000_000):
                self._live[incident.id] = incident
            self._high = self._next_id(from_file=True) - 1
        except BaseException:
            if self._owns:
                self.db.close()
            raise

    @classmethod
    def from_config(
        cls,
        config: Config,
        now: Callable[[], datetime] | None = None,
        *,
        db: Database | None = None,
    ) -> Store:
        """Open ``config.store_path`` (or the shared ``db``) with the retention settings."""
        return cls(
            db if db is not None else config.store_path,
            retention_days=config.store.retention_days,
            max_events=config.store.max_events,
            now=now,
        )

    # ------------------------------------------------------------------ plumbing

    def close(self) -> None:
        """Close the Database if this store opened it (the daemon closes the shared one)."""
        if self._owns:
            self.db.close()

    @property
    def schema_version(self) -> int:
        return self.db.version(INCIDENTS.name)

    def integrity_check(self) -> str:
        return self.db.integrity_check()

    # ------------------------------------------------------------------ events

    def add_result(self, result: CheckResult, incident_id: int | None = None) -> int:
        row = (
            incident_id,
            result.target,
            result.check,
            result.kind,
            str(result.status),
            result.reason,
            dumps(result.values),
            ts(result.started),
            ts(result.finished),
            float(result.duration),
        )
        return self._event_write(
            lambda db: db.execute(
                "INSERT INTO results (incident_id, target, check_name, kind, status, reason,"
                " vals, started, finished, duration) VALUES (?,?,?,?,?,?,?,?,?,?)",
                row,
            )
        )

    def add_recovery(self, event: RecoveryEvent, incident_id: int | None = None) -> int:
        row = (
            incident_id,
            event.target,
            str(event.kind),
            ts(event.time),
            event.attempt,
            event.reason,
            event.detail,
            dumps(event.values),
        )
        return self._event_write(
            lambda db: db.execute(
                "INSERT INTO recovery (incident_id, target, kind, time, attempt, reason,"
                " detail, vals) VALUES (?,?,?,?,?,?,?,?)",
                row,
            )
        )

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
        row = (incident_id, target, channel, transition, ts(time), int(ok), error[:2000])
        return self._event_write(
            lambda db: db.execute(
                "INSERT INTO notifications (incident_id, target, channel, transition, time,"
                " ok, error) VALUES (?,?,?,?,?,?,?)",
                row,
            )
        )

    def query(self, sql: str, args: Sequence[Any] = ()) -> list[sqlite3.Row]:
        """Rows from the file (its committed state, on this thread's read-only connection:
        never waits for a write)."""
        rows: list[sqlite3.Row] = self.db.snapshot(
            lambda c: c.execute(sql, tuple(args)).fetchall())
        return rows

    def last_statuses(self) -> dict[tuple[str, str], str]:
        """The last stored status of every (target, check): where change detection resumes."""
        rows = self.query(
            "SELECT target, check_name, status FROM results WHERE id IN"
            " (SELECT MAX(id) FROM results GROUP BY target, check_name)"
        )
        return {(r["target"], r["check_name"]): r["status"] for r in rows}

    def results(
        self, incident_id: int | None = None, target: str | None = None, limit: int = 10_000
    ) -> list[StoredResult]:
        """Results of one incident (or one target), oldest first."""
        where, args = _filters(incident_id=incident_id, target=target)
        rows = self.query(
            f"SELECT * FROM (SELECT * FROM results {where} ORDER BY id DESC LIMIT ?) ORDER BY id",
            (*args, limit),
        )
        return [result_from_row(r) for r in rows]

    def latest_results(self, kinds: Sequence[str]) -> list[StoredResult]:
        """The newest stored result of each check of the given kinds."""
        marks = ",".join("?" * len(kinds))
        rows = self.query(
            f"SELECT * FROM results WHERE id IN (SELECT MAX(id) FROM results WHERE kind IN"
            f" ({marks}) GROUP BY target, check_name) ORDER BY target, check_name",
            tuple(kinds),
        )
        return [result_from_row(r) for r in rows]

    def recovery_events(
        self, incident_id: int | None = None, target: str | None = None, limit: int = 10_000
    ) -> list[StoredRecovery]:
        where, args = _filters(incident_id=incident_id, target=target)
        rows = self.query(
            f"SELECT * FROM (SELECT * FROM recovery {where} ORDER BY id DESC LIMIT ?) ORDER BY id",
            (*args, limit),
        )
        return [recovery_from_row(r) for r in rows]

    def notifications(self, incident_id: int | None = None) -> list[NotificationAttempt]:
        where, args = _filters(incident_id=incident_id)
        rows = self.query(f"SELECT * FROM notifications {where} ORDER BY id", args)
        return [
            NotificationAttempt(
                id=r["id"],
                incident_id=r["incident_id"],
                target=r["target"],
                channel=r["channel"],
                transition=r["transition"],
                time=dt(r["time"]),
                ok=bool(r["ok"]),
                error=r["error"],
            )
            for r in rows
        ]

    def notified(self, incident_id: int, transition: str) -> bool:
        """Whether a message for this transition of this incident was already attempted."""
        rows = self.query(
            "SELECT 1 FROM notifications WHERE incident_id = ? AND transition = ? LIMIT 1",
            (incident_id, transition),
        )
        return bool(rows)

    # ------------------------------------------------------------------ incidents

    def open_incident(
        self, target: str, opened_at: datetime, severity: str, summary: str
    ) -> Incident:
        """A new open incident. Never fails for a store that cannot write: the incident is
        then held in memory (with an id the file will get) and written when it can be."""
        stored = self._stored_high() if not self._background else 0
        with self._mu:
            new_id = self._next_id(stored)
            self._high = max(self._high, new_id)
            incident = Incident(
                id=new_id,
                target=target,
                opened_at=dt(ts(opened_at)),
                escalated_at=None,
                resolved_at=None,
                severity=severity,
                status="open",
                summary=summary,
                failure_count=0,
                flap_count=0,
                report_path=None,
            )
        self._put_incident(incident)
        self._wrote()
        return incident

    def _stored_high(self) -> int:
        """The highest id the file ever gave (AUTOINCREMENT's rule); 0 when unreadable."""
        try:
            rows = self.query(
                "SELECT MAX(n) FROM (SELECT seq AS n FROM sqlite_sequence WHERE name ="
                " 'incidents' UNION ALL SELECT MAX(id) FROM incidents)"
            )
        except StoreUnavailable:
            return 0
        return int(rows[0][0] or 0)

    def _next_id(self, stored: int = 0, *, from_file: bool = False) -> int:
        """One above every id the file gave or memory holds. The daemon reads the file
        once (it is the only writer: the store lock); the CLI and tools each time."""
        if from_file:
            stored = self._stored_high()
        with self._mu:
            return max([stored, self._high, *self._live]) + 1

    def adopt_recovery(self, target: str, incident_id: int, since: datetime) -> int:
        """Link the target's unlinked recovery events since ``since`` to an incident.

        A supervised process's exit is usually seen before the check that fails because
        of it; this puts that exit into the incident it caused.
        """
        def adopt(db: sqlite3.Connection) -> int:
            return int(db.execute(
                "UPDATE recovery SET incident_id = ? WHERE target = ? AND"
                " incident_id IS NULL AND time >= ?",
                (incident_id, target, ts(since)),
            ).rowcount)

        if self._background:  # queued after the events it adopts: one order for both
            self._queue_event(adopt)
            return 0
        if not self._flush_incidents():
            return 0
        try:
            return self.db.write(adopt)
        except StoreUnavailable:
            return 0

    def update_incident(
        self,
        incident_id: int,
        *,
        status: IncidentStatus | None = None,
        escalated_at: datetime | None = None,
        resolved_at: datetime | None = None,
        severity: str | None = None,
        summary: str | None = None,
        failure_count: int | None = None,
        flap_count: int | None = None,
        report_path: str | None = None,
    ) -> Incident:
        """Change what is given of one incident (its identity stays); returns the new row.

        Typed and explicit: ``None`` leaves a field as it is (no field is ever cleared).
        """
        if status is not None and status not in ("open", "escalated", "resolved"):
            raise ValueError(f"unknown incident status {status!r}")
        current = self.incident(incident_id)
        if current is None:
            raise KeyError(incident_id)
        updated = replace(
            current,
            status=current.status if status is None else status,
            escalated_at=_at(escalated_at, current.escalated_at),
            resolved_at=_at(resolved_at, current.resolved_at),
            severity=current.severity if severity is None else severity,
            summary=current.summary if summary is None else summary,
            failure_count=current.failure_count if failure_count is None else failure_count,
            flap_count=current.flap_count if flap_count is None else flap_count,
            report_path=current.report_path if report_path is None else report_path,
        )
        self._put_incident(updated)
        return updated

    def incident(self, incident_id: int) -> Incident | None:
        with self._mu:  # memory holds every incident not (yet) in the file
            held = self._live.get(incident_id)
        if held is not None:
            return held
        rows = self.query("SELECT * FROM incidents WHERE id = ?", (incident_id,))
        if not rows:  # written and let go of between the two looks
            with self._mu:
                held = self._live.get(incident_id)
            return held
        return incident_from_row(rows[0])

    def _read_incidents(self, *, include_resolved: bool, limit: int) -> list[Incident]:
        where = "" if include_resolved else "WHERE status IN ('open', 'escalated')"
        rows = self.query(f"SELECT * FROM incidents {where} ORDER BY id DESC LIMIT ?", (limit,))
        return [incident_from_row(r) for r in rows]

    def incidents(self, *, include_resolved: bool = True, limit: int = 1000) -> list[Incident]:
        """Newest first (what memory holds wins over the file: it is newer)."""
        with self._mu:  # before and after the read: one let go of meanwhile is in either
            before = dict(self._live)
        found = {
            i.id: i for i in self._read_incidents(include_resolved=include_resolved, limit=limit)
        }
        found.update(before)
        with self._mu:
            found.update(self._live)
        chosen = [i for i in found.values() if include_resolved or i.is_open]
        return sorted(chosen, key=lambda i: i.id, reverse=True)[:limit]

    def open_incidents(self) -> list[Incident]:
        return self.incidents(include_resolved=False)

    # ------------------------------------------------------------------ artifacts

    def put_artifact(self, incident_id: int, name: str, body: str, captured_at: datetime) -> None:
        self._event_write(
            lambda db: db.execute(
                "INSERT OR REPLACE INTO artifacts (incident_id, name, captured_at, body)"
                " VALUES (?,?,?,?)",
                (incident_id, name, ts(captured_at), body),
            )
        )

    def artifact(self, incident_id: int, name: str) -> tuple[datetime, str] | None:
        rows = self.query(
            "SELECT captured_at, body FROM artifacts WHERE incident_id = ? AND name = ?",
            (incident_id, name),
        )
        return None if not rows else (dt(rows[0]["captured_at"]), rows[0]["body"])

    # ------------------------------------------------------------------ retention

    def counts(self) -> dict[str, int]:
        return {
            t: int(self.query(f"SELECT COUNT(*) FROM {t}")[0][0])
            for t in ("incidents", "results", "recovery", "notifications", "artifacts")
        }

    def prune_soon(self, now: datetime | None = None) -> None:
        """:meth:`prune` on the writer thread (at once without one): the daemon's start
        must not wait for a file another process holds."""
        self.db.submit(lambda: self.prune(now))

    def prune(self, now: datetime | None = None) -> dict[str, int]:
        """Drop data older than the retention period and cap each event table.

        Rows of open incidents are kept whatever their age (a report still needs them).
        Each event table keeps at most ``max_events`` newest rows. Uses the time and id
        indexes, so it is cheap enough to run on startup and every ``prune_every`` writes.
        Nothing is pruned while the store cannot write ({} then).
        """
        cutoff = ts((now or self._now()) - self.retention)
        keep_open = "(SELECT id FROM incidents WHERE status IN ('open', 'escalated'))"

        def run(db: sqlite3.Connection) -> dict[str, int]:
            removed: dict[str, int] = {}
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

        if not self._flush_incidents():
            return {}
        try:
            return self.db.write(run)
        except StoreUnavailable:
            return {}


def _at(given: datetime | None, current: datetime | None) -> datetime | None:
    """A given time as the store keeps it (UTC, microseconds), else the current one."""
    return current if given is None else dt(ts(given))


def _filters(**kw: Any) -> tuple[str, tuple[Any, ...]]:
    cols = {"incident_id": "incident_id", "target": "target"}
    parts = [f"{cols[k]} = ?" for k, v in kw.items() if v is not None]
    args = tuple(v for v in kw.values() if v is not None)
    return ("WHERE " + " AND ".join(parts) if parts else ""), args


