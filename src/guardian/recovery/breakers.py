"""What survives a Guardian restart of the restart policy: attempts and the circuit breaker.

A component of Guardian's SQLite file (:mod:`guardian.db`): one row per target in the
``breakers`` table, versioned in ``guardian_schema``. The SQLite store keeps the last
record of every target in memory too, because the breaker state matters most exactly when
the file does not work: a save that fails for a full disk is kept and written with the next
one that works, and a file replaced mid-run (damage found) gets every record written back.
A save is a dict update; the write is the Database's writer thread's (in the daemon), so a
file locked by another process never holds the restart that saved it.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from guardian.store.db import Component, Database, StoreUnavailable

log = logging.getLogger("guardian.recovery.breakers")


@dataclass
class BreakerRecord:
    """What survives a Guardian restart for one target."""

    attempts: int = 0
    attempt_times: list[str] = field(default_factory=list)  # wall clock, ISO 8601 UTC
    last_restart: str | None = None
    breaker_open: bool = False


class BreakerStore(Protocol):
    def load(self) -> dict[str, BreakerRecord]: ...

    def save(self, target: str, record: BreakerRecord) -> None: ...


class MemoryBreakerStore:
    """A store that lives as long as the object (tests, --dry-run)."""

    def __init__(self) -> None:
        self.records: dict[str, BreakerRecord] = {}

    def load(self) -> dict[str, BreakerRecord]:
        return {k: _copy(v) for k, v in self.records.items()}

    def save(self, target: str, record: BreakerRecord) -> None:
        self.records[target] = _copy(record)

    def close(self) -> None:
        pass


def _not_after(iso: str, now: datetime) -> str:
    """A stored time that lies in the future (the wall clock was stepped back since it was
    written) becomes now: a restart is then held for its cooldown, not for the step."""
    try:
        t = datetime.fromisoformat(iso)
    except ValueError:
        return iso
    return now.isoformat() if t.tzinfo is not None and t > now else iso


def _copy(r: BreakerRecord) -> BreakerRecord:
    return BreakerRecord(r.attempts, list(r.attempt_times), r.last_restart, r.breaker_open)


# Index i upgrades version i -> i + 1; append, never edit.
BREAKER_COMPONENT = "breakers"
BREAKER_MIGRATIONS: tuple[str, ...] = (
    # IF NOT EXISTS: files written before versioning already have this exact table.
    "CREATE TABLE IF NOT EXISTS breakers ("
    " target TEXT PRIMARY KEY,"
    " attempts INTEGER NOT NULL,"
    " attempt_times TEXT NOT NULL,"
    " last_restart TEXT,"
    " breaker_open INTEGER NOT NULL,"
    " updated TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')));",
)
BREAKER_SCHEMA_VERSION = len(BREAKER_MIGRATIONS)
BREAKERS = Component(BREAKER_COMPONENT, BREAKER_MIGRATIONS)

_UPSERT = (
    "INSERT INTO breakers (target, attempts, attempt_times, last_restart,"
    " breaker_open, updated) VALUES (?, ?, ?, ?, ?,"
    " strftime('%Y-%m-%dT%H:%M:%fZ','now'))"
    " ON CONFLICT(target) DO UPDATE SET attempts=excluded.attempts,"
    " attempt_times=excluded.attempt_times, last_restart=excluded.last_restart,"
    " breaker_open=excluded.breaker_open, updated=excluded.updated"
)


class SqliteBreakerStore:
    """Breaker state in its table of Guardian's SQLite file.

    Give it the shared :class:`Database` (the daemon) or a path (tools, tests: it then
    opens and owns a strict Database of its own, which raises instead of recovering).
    """

    def __init__(self, db: Database | Path | str) -> None:
        self._owns = not isinstance(db, Database)
        self.db = db if isinstance(db, Database) else Database(db, components=(BREAKERS,))
        self.path = self.db.path
        self._records: dict[str, BreakerRecord] = {}
        self._unsaved: set[str] = set()
        # Memory only, never held over I/O: save() on the loop, _flush on the writer.
        self._mu = threading.RLock()
        try:
            self.db.register(BREAKERS, self._rewrite_all)
        except BaseException:
            if self._owns:
                self.db.close()
            raise

    @property
    def schema_version(self) -> int:
        return self.db.version(BREAKER_COMPONENT)

    def load(self) -> dict[str, BreakerRecord]:
        rows = self.db.read(
            lambda c: c.execute(
                "SELECT target, attempts, attempt_times, last_restart, breaker_open FROM breakers"
            ).fetchall()
        )
        out: dict[str, BreakerRecord] = {}
        for target, attempts, times, last, is_open in rows:
            try:
                parsed = [str(t) for t in json.loads(times)]
            except (ValueError, TypeError):
                parsed = []
            now = datetime.now(UTC)
            out[str(target)] = BreakerRecord(
                int(attempts), [_not_after(t, now) for t in parsed],
                None if last is None else _not_after(str(last), now), bool(is_open))
        with self._mu:
            for target, rec in out.items():
                if target not in self._unsaved:
                    self._records[target] = _copy(rec)
            merged = {**out, **{t: _copy(self._records[t]) for t in self._unsaved}}
        return merged

    def save(self, target: str, record: BreakerRecord) -> None:
        """Keep ``record`` and queue its write (never waits for the file); if the store
        cannot write now it is kept and written later."""
        with self._mu:
            self._records[target] = _copy(record)
            self._unsaved.add(target)
        self.db.submit(self._flush, key=f"{BREAKER_COMPONENT}:{id(self)}")

    def _flush(self) -> None:
        with self._mu:
            pending = {t: self._records[t] for t in sorted(self._unsaved)}
        if not pending:
            return

        def write(c: sqlite3.Connection) -> None:
            for t, r in pending.items():
                times = json.dumps(r.attempt_times)
                c.execute(_UPSERT, (t, r.attempts, times, r.last_restart, int(r.breaker_open)))

        try:
            self.db.write(write)
        except StoreUnavailable:
            return  # logged (rate-limited) and shown by the Database; kept for next time
        with self._mu:  # a record saved again meanwhile stays unsaved: its write is queued
            self._unsaved.difference_update(
                t for t, r in pending.items() if self._records.get(t) is r)

    def _rewrite_all(self) -> None:
        """The file was replaced: write back every record this process knows."""
        with self._mu:
            self._unsaved.update(self._records)
        self._flush()
        if self._records:
            log.warning(
                "breaker state of %d target(s) re-saved into the fresh store",
                len(self._records),
                extra={"event": "store_resaved", "component": BREAKER_COMPONENT},
            )

    @property
    def unsaved(self) -> set[str]:
        """Targets whose latest record is not in the file yet."""
        with self._mu:
            return set(self._unsaved)

    def close(self) -> None:
        """Close the Database if this store opened it (the daemon closes the shared one)."""
        if self._owns:
            self.db.close()
