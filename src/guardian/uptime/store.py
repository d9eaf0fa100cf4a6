"""Per-target uptime: ok/total counts of check results in fixed time buckets, persisted.

What a status page needs for "99.2 % over 7 days" and a history bar is far less than the
results themselves: counts per target per time bucket of how many results came in, how
many of them were up, and how many restarts Guardian started. Two tables keep it small
at any scale: ``uptime`` holds 5-minute buckets for the last 25 hours (the 24 h window
and the 24 h history bar), ``uptime_hourly`` holds hourly totals for 31 days (the 7 d and
30 d windows, whose start is taken at the hour). 1000 targets are then at most ~1 M
small rows, and the percentages stay honest across Guardian restarts.

A result counts as *up* unless it FAILED (a busy ComfyUI is OK, a degraded one still
serves); SKIPPED results (not applicable here) are not counted at all. Failures during a
target's startup phase count as down: the service really was not serving; but only once
the target has been up at all (a fresh install's first boot is not downtime: uptime counts
from its first up result).

A component of Guardian's SQLite file (:mod:`guardian.store.db`): its tables come from its
migrations, every write and read goes through the Database (its lock, its rules for a
full disk, a damaged or a refused file). Counts are buffered and flushed in batches by
:class:`~guardian.uptime.recorder.UptimeRecorder`; the windows and the bar are read and
cached by :class:`~guardian.uptime.reads.UptimeReader`; this module is the tables and what
writes them: a flush's upserts and pruning. A file replaced mid-run gets what is buffered
and starts its history from there (the older counts stay in the moved-aside file).
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

from guardian.store.db import Component, Database, StoreError, StoreUnavailable
from guardian.uptime.reads import UptimeReader
from guardian.uptime.recorder import Buffer
from guardian.uptime.windows import HOUR, WINDOWS, Bar, BarArrays, Counts, epoch

__all__ = [  # the shapes readers take from here, as before the split
    "UPTIME", "UPTIME_SCHEMA_VERSION", "WINDOWS", "Bar", "BarArrays", "Counts", "UptimeStore",
]

log = logging.getLogger("guardian.uptime.store")

UPTIME_COMPONENT = "uptime"
# Index i upgrades version i -> i + 1; append, never edit a shipped entry.
UPTIME_MIGRATIONS: tuple[str, ...] = (
    "CREATE TABLE IF NOT EXISTS uptime ("
    " target TEXT NOT NULL,"
    " bucket INTEGER NOT NULL,"  # epoch seconds of the bucket's start (UTC)
    " ok INTEGER NOT NULL,"
    " total INTEGER NOT NULL,"
    " restarts INTEGER NOT NULL DEFAULT 0,"
    " PRIMARY KEY (target, bucket)) WITHOUT ROWID;",
    # v2: hourly totals for the long windows, so a 30 d figure never reads 8640 buckets
    # per target; filled from the 5-minute buckets a v1 file already holds.
    "CREATE TABLE uptime_hourly ("
    " target TEXT NOT NULL,"
    " hour INTEGER NOT NULL,"  # epoch seconds of the hour's start (UTC)
    " ok INTEGER NOT NULL,"
    " total INTEGER NOT NULL,"
    " restarts INTEGER NOT NULL DEFAULT 0,"
    " PRIMARY KEY (target, hour)) WITHOUT ROWID;\n"
    "INSERT INTO uptime_hourly (target, hour, ok, total, restarts)"
    " SELECT target, bucket - bucket % 3600, SUM(ok), SUM(total), SUM(restarts)"
    " FROM uptime GROUP BY target, bucket - bucket % 3600;",
)
UPTIME_SCHEMA_VERSION = len(UPTIME_MIGRATIONS)
UPTIME = Component(UPTIME_COMPONENT, UPTIME_MIGRATIONS)

BUCKET_SECONDS = 300
RETENTION_DAYS = 31.0  # hourly totals: the longest window shown is 30 d
FINE_RETENTION = timedelta(hours=25)  # 5-minute buckets: the 24 h window and bar
MAX_PENDING = 50_000  # buffered (target, bucket) counts while the store cannot write

_UPSERT = (
    "INSERT INTO {table} (target, {col}, ok, total, restarts) VALUES (?, ?, ?, ?, ?)"
    " ON CONFLICT(target, {col}) DO UPDATE SET ok = ok + excluded.ok,"
    " total = total + excluded.total, restarts = restarts + excluded.restarts"
)
_UPSERT_FINE = _UPSERT.format(table="uptime", col="bucket")
_UPSERT_HOURLY = _UPSERT.format(table="uptime_hourly", col="hour")


class UptimeStore(UptimeReader):
    """Bucketed ok/total/restart counts per target in the ``uptime`` tables of ``db``.

    Give it the shared :class:`Database` (the daemon) or a path (tools, tests: it then
    opens and owns a strict Database of its own). Results arrive on the event loop;
    the API reads from its own thread. Lock order is always the Database's lock, the
    aggregates' lock, then the buffer's; recording takes only the buffer's, and a query
    holds none of them (it reads a snapshot on :meth:`Database.snapshot`), so neither
    recording nor a flush waits for a query.
    """

    def __init__(
        self,
        db: Database | Path | str,
        *,
        bucket_seconds: int = BUCKET_SECONDS,
        retention_days: float = RETENTION_DAYS,
        fine_retention: timedelta = FINE_RETENTION,
        flush_every: float = 60.0,
        max_pending: int = MAX_PENDING,
        now: Callable[[], datetime] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(bucket_seconds=bucket_seconds, flush_every=flush_every,
                         max_pending=max_pending, now=now, monotonic=monotonic)
        self._owns = not isinstance(db, Database)
        self.db = db if isinstance(db, Database) else Database(db, components=(UPTIME,))
        self.retention = timedelta(days=retention_days)
        self.fine_retention = max(fine_retention, WINDOWS["24h"] + timedelta(hours=1))
        try:
            self.db.register(UPTIME, self._resave)
        except BaseException:
            if self._owns:
                self.db.close()
            raise
        self._ever_up = self._targets_ever_up()

    def _targets_ever_up(self) -> set[str]:
        """Targets with an up result on record: uptime counts from the first one."""
        try:
            rows = self.db.read(
                lambda c: c.execute("SELECT DISTINCT target FROM uptime_hourly WHERE ok > 0")
                .fetchall()
            )
        except (StoreError, sqlite3.Error):
            return set()
        return {str(r[0]) for r in rows}

    @property
    def schema_version(self) -> int:
        return self.db.version(UPTIME_COMPONENT)

    # ------------------------------------------------------------------ writing

    def _write(self, batch: Buffer) -> bool:
        fine = [(t, b, c[0], c[1], c[2]) for (t, b), c in batch.items()]
        hourly: Buffer = {}
        for (t, b), c in batch.items():
            h = hourly.setdefault((t, b - b % HOUR), [0, 0, 0])
            h[0] += c[0]
            h[1] += c[1]
            h[2] += c[2]
        coarse = [(t, h, c[0], c[1], c[2]) for (t, h), c in hourly.items()]

        def write(c: sqlite3.Connection) -> None:
            c.executemany(_UPSERT_FINE, fine)
            c.executemany(_UPSERT_HOURLY, coarse)

        # The agg lock makes a batch move from "buffered" to "stored" in one step for
        # readers and orders it against their snapshots; the Database's lock comes first
        # (the order everywhere, also when a read on memory holds it).
        with self.db.lock, self._agg_lock:
            try:
                self.db.write(write)
            except (StoreError, sqlite3.Error) as e:
                with self._buf_lock:
                    self._inflight.pop(id(batch), None)
                    self._keep(batch)
                if not isinstance(e, StoreUnavailable):  # full disk, I/O: the Database logs
                    log.warning("uptime counts not written (%s): kept for the next flush", e,
                                extra={"event": "uptime_flush_failed"})
                return False
            with self._buf_lock:
                self._inflight.pop(id(batch), None)
            self._fold(batch)
        return True

    def _flush_due(self) -> None:
        """Queue the flush for the Database's writer thread (at once without one): a
        locked or hung file never holds the event loop that recorded the result."""
        with self._buf_lock:  # one queued flush per period, however many results come
            self._next_flush = self._monotonic() + self.flush_every
        self.db.submit(self.flush, key=f"{UPTIME_COMPONENT}:{id(self)}")

    def _resave(self) -> None:
        """The file was replaced: what is buffered goes into the fresh one."""
        self._forget()
        self.flush()
        log.warning(
            "uptime history restarts in the fresh store (earlier counts stay in the file"
            " moved aside)",
            extra={"event": "store_resaved", "component": UPTIME_COMPONENT},
        )

    def prune(self, now: datetime | None = None) -> int:
        """Drop buckets older than their retention; returns how many rows went."""
        now = now or self._now()
        fine_cut = self.bucket_of(now - self.fine_retention)
        e = int(epoch(now - self.retention))
        hour_cut = e - e % HOUR
        self._next_prune = self._monotonic() + HOUR

        def run(c: sqlite3.Connection) -> int:
            n = c.execute("DELETE FROM uptime WHERE bucket < ?", (fine_cut,)).rowcount
            return n + c.execute("DELETE FROM uptime_hourly WHERE hour < ?", (hour_cut,)).rowcount

        with self.db.lock, self._agg_lock:
            try:
                removed = self.db.write(run)
            except (StoreError, sqlite3.Error) as e:
                log.debug("uptime prune skipped: %s", e)
                return 0
            if removed:
                self._forget_before(fine_cut, hour_cut)
        return removed

    def close(self) -> None:
        """Flush what is buffered (queued in the daemon: the Database's close writes it);
        close the Database only if this store opened it."""
        self.db.submit(self.flush)
        if self._owns:
            self.db.close()

    # ------------------------------------------------------------------ reading
