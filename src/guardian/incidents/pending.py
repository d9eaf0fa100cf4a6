"""What the incident store holds until the file has it, and how it gets there.

Why apart from the store's queries: this is the part that keeps the event loop off the
file. Open incidents (and any not yet written) live in memory, new ids come from the
highest id seen, event rows wait in order in a bounded list; the Database's writer
thread writes them (:meth:`Database.submit`): the incident rows first (events refer to
them), then every waiting row in one transaction. A write that fails (a full disk, a
file locked by another process) keeps the incidents unsaved for the next one and drops
the rows, counted. Without a writer thread (the CLI, tools) each write is done at once.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from datetime import datetime

from guardian.incidents.migrations import INCIDENTS
from guardian.incidents.records import Incident, incident_row
from guardian.store.db import Database, StoreUnavailable

log = logging.getLogger("guardian.incidents.store")

MAX_QUEUED_EVENTS = 10_000  # event rows waiting for the writer before new ones are dropped

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


class PendingWrites(ABC):
    """The memory of the incident store and its writes (the base of ``Store``)."""

    def __init__(self, db: Database, prune_every: int) -> None:
        self.db = db
        self.prune_every = prune_every
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

    @abstractmethod
    def prune(self, now: datetime | None = None) -> dict[str, int]:
        """Drop what is past retention (the store's SQL)."""

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
