"""The incident store: results, recovery actions, incidents, notices in Guardian's SQLite file.

A component of the one file :mod:`guardian.store.db` owns (its tables and migrations:
:mod:`guardian.incidents.migrations`; the records it returns:
:mod:`guardian.incidents.records`; the timeline view: :mod:`guardian.incidents.timeline`).

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

import contextlib
import logging
import sqlite3
import threading
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from guardian.config.schema import Config
from guardian.core.events import RecoveryEvent
from guardian.core.result import CheckResult
from guardian.incidents.migrations import INCIDENTS, MIGRATIONS, SCHEMA_VERSION
from guardian.incidents.records import (
    Incident,
    IncidentStatus,
    NotificationAttempt,
    StoredRecovery,
    StoredResult,
    dt,
    dumps,
    incident_from_row,
    incident_row,
    recovery_from_row,
    result_from_row,
    ts,
)
from guardian.store.db import Database, StoreError, StoreUnavailable

log = logging.getLogger("guardian.incidents.store")

MAX_QUEUED_EVENTS = 10_000  # event rows waiting for the writer before new ones are dropped

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

_INCIDENT_COLS = (
    "id",
    "target",
    "opened_at",
    "escalated_at",
    "resolved_at",
    "severity",
    "status",
    "summary",
    "failure_count",
    "flap_count",
    "report_path",
)
_UPSERT_INCIDENT = (
    f"INSERT INTO incidents ({', '.join(_INCIDENT_COLS)}) VALUES"
    f" ({','.join('?' * len(_INCIDENT_COLS))}) ON CONFLICT(id) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in _INCIDENT_COLS[1:])
)


class Store:
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
        self.db = path if isinstance(path, Database) else Database(path, components=(INCIDENTS,))
        self.path = self.db.path
        self.retention = timedelta(days=retention_days)
        self.max_events = max_events
        self.prune_every = prune_every
        self._now = now or (lambda: datetime.now(UTC))
        self._writes = 0
        self.dropped = 0  # event rows that could not be written (store unavailable)
        self._live: dict[int, Incident] = {}  # open incidents, and any not yet in the file
        self._unsaved: set[int] = set()
        self._high = 0  # the highest incident id this process has seen: ids are never reused
        # Memory only (_live, _unsaved, _high, counters), never held over I/O: the loop puts,
        # the writer thread flushes. Lock order: the Database's lock, then this one.
        self._mu = threading.RLock()
        self._flush_key = f"{INCIDENTS.name}:{id(self)}"
        self._events: list[Callable[[sqlite3.Connection], object]] = []  # queued rows
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

    async def settled(self, timeout: float = 5.0) -> bool:
        """Wait (off the loop, bounded) until the writes queued so far are in the file:
        for a reader that needs them (the report of what was just recorded)."""
        return await self.db.settled(timeout)

    @property
    def _background(self) -> bool:
        return self.db.writer_thread is not None

    def _wrote(self, n: int = 1) -> None:
        with self._mu:
            before, self._writes = self._writes, self._writes + n
            due = bool(self.prune_every) and (
                self._writes // self.prune_every > before // self.prune_every)
        if due:
            self.db.submit(self.prune, key=f"{self._flush_key}:prune")

    def _dropped(self, n: int = 1) -> None:
        with self._mu:
            self.dropped += n

    def _event_write(self, fn: Callable[[sqlite3.Connection], object]) -> int:
        """Write one event row: at once without a writer thread (its row id; 0 when
        dropped, counted: the store cannot write), else queued (0) for one batch."""
        if self._background:
            self._queue_event(fn)
            return 0
        if not self._flush_incidents():
            self._dropped()
            return 0
        try:
            out = self.db.write(fn)
        except StoreUnavailable:
            self._dropped()
            return 0
        self._wrote()
        return int(getattr(out, "lastrowid", 0) or 0)

    def _queue_event(self, fn: Callable[[sqlite3.Connection], object]) -> None:
        """Rows wait in order (bounded) for one job that writes them all in one
        transaction: the loop pays a list append, the file one commit per batch."""
        with self._mu:
            full = len(self._events) >= MAX_QUEUED_EVENTS
            if full:
                self.dropped += 1
            else:
                self._events.append(fn)
        if full:
            self.db.report_backlog(f"{MAX_QUEUED_EVENTS} incident rows wait for the file")
            return
        self.db.submit(self._write_events, key=f"{self._flush_key}:events")

    def _write_events(self) -> None:
        ok = self._flush_incidents()  # their rows first: events refer to them
        with self._mu:
            ops, self._events = self._events, []
            if not ok:
                self.dropped += len(ops)
        if not ops or not ok:
            return

        def run(c: sqlite3.Connection) -> None:
            for op in ops:
                op(c)

        try:
            self.db.write(run)
        except StoreUnavailable:
            self._dropped(len(ops))
            return
        except sqlite3.Error:  # a bad row: write the others one by one, without it
            for op in ops:
                try:
                    self.db.write(op)
                except (sqlite3.Error, StoreUnavailable):
                    log.exception("an incident-store row was not written")
                    self._dropped()
        self._wrote(len(ops))

    def _flush_incidents(self) -> bool:
        """Write every unsaved incident row; False when the store cannot write now."""
        with self._mu:
            pending = {i: self._live[i] for i in sorted(self._unsaved)}
        if not pending:
            return True
        rows = [incident_row(i) for i in pending.values()]

        def write(c: sqlite3.Connection) -> None:
            c.executemany(_UPSERT_INCIDENT, rows)

        try:
            self.db.write(write)
        except StoreUnavailable:
            return False
        with self._mu:  # one changed meanwhile stays unsaved: its own flush is queued
            for i, written in pending.items():
                if self._live.get(i) is written:
                    self._unsaved.discard(i)
                    if not written.is_open:
                        del self._live[i]
        return True

    def _put_incident(self, incident: Incident) -> None:
        incident_row(incident)  # a bad value raises here, before anything changes
        with self._mu:
            before = self._live.get(incident.id)
            was_unsaved = incident.id in self._unsaved
            self._live[incident.id] = incident
            self._unsaved.add(incident.id)
        if self._background:
            self.db.submit(self._flush_incidents, key=self._flush_key)
            return
        try:
            self._flush_incidents()
        except Exception:
            # Not the store's trouble (a bad value): undo, so it cannot block later writes.
            with self._mu:
                if before is None:
                    self._live.pop(incident.id, None)
                else:
                    self._live[incident.id] = before
                if not was_unsaved:
                    self._unsaved.discard(incident.id)
            raise

    def _rewrite_live(self) -> None:
        """The file was replaced: write the incidents this process holds, same ids."""
        high = self._high

        def keep_ids_unique(c: sqlite3.Connection) -> None:
            # A report file is named after its incident id: the fresh file must not reuse one.
            c.execute(
                "INSERT OR IGNORE INTO sqlite_sequence (name, seq) SELECT 'incidents', 0"
                " WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = 'incidents')"
            )
            c.execute(
                "UPDATE sqlite_sequence SET seq = MAX(seq, ?) WHERE name = 'incidents'", (high,)
            )

        with contextlib.suppress(StoreUnavailable):
            self.db.write(keep_ids_unique)
        with self._mu:
            self._unsaved.update(self._live)
            n = len(self._live)
        self._flush_incidents()
        if n:
            log.warning(
                "%d open incident(s) re-saved into the fresh store",
                n,
                extra={"event": "store_resaved", "component": INCIDENTS.name},
            )

    @property
    def unsaved(self) -> set[int]:
        """Incident ids whose latest state is not in the file yet."""
        with self._mu:
            return set(self._unsaved)

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


