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

A component of Guardian's SQLite file (:mod:`guardian.db`): its tables come from its
migrations, every write and read goes through the Database (its lock, its rules for a
full disk, a damaged or a refused file). Recording a result is a dict update in memory
(O(1), no I/O); the buffer is written in one transaction at most every ``flush_every``
seconds (about two upserts per target per flush), and on close. A write that fails
keeps the counts in memory (bounded: the oldest buckets go first, counted in
``dropped``); a file replaced mid-run gets what is buffered and starts its history from
there (the older counts stay in the moved-aside file). Reads aggregate in SQL once when
a window moves (every 5 minutes for the 24 h window and the bar, hourly for 7 d and
30 d) on the store's read-only connection, so a flush from the event loop never waits
for it, and each flush folds its batch into those figures, so a status page polled by
many clients costs no query per request.

Windows moving on do not re-read what they already hold. The last day's 5-minute
buckets are read once into dense arrays (:mod:`guardian.uptime.windows`, ~7 MB at 1000
targets) and kept current by the flushes: a 5-minute move derives the 24 h window and
the bar from them with no query, in C loops that hold the GIL for milliseconds. An
hourly move takes the previous 7 d / 30 d figures less the hour(s) that left, read by
target (about one row per target and window) instead of 31 days of totals. Everything
is read in full when there is nothing to derive from: the first read, after a Guardian
start or a replaced file, a move of a whole window or more (Guardian asleep, a clock
jump) or a clock that went back. A failed read caches nothing, so the next one tries
again. The figures are the same either way (``tests/uptime/test_uptime_moves.py``
compares them with a full read at every move over simulated days).
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol, TypeVar

from guardian.core.events import Event, EventBus, RecoveryEvent, RecoveryKind
from guardian.core.result import CheckResult, Status
from guardian.store.db import Component, Database, StoreError, StoreUnavailable
from guardian.uptime.windows import FineTail

log = logging.getLogger("guardian.uptime.store")

UPTIME_COMPONENT = "uptime"
HOUR = 3600
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
WINDOWS: dict[str, timedelta] = {
    "24h": timedelta(hours=24),
    "7d": timedelta(days=7),
    "30d": timedelta(days=30),
}
_FINE_WINDOWS = ("24h",)  # from 5-minute buckets; the others from hourly totals

_UPSERT = (
    "INSERT INTO {table} (target, {col}, ok, total, restarts) VALUES (?, ?, ?, ?, ?)"
    " ON CONFLICT(target, {col}) DO UPDATE SET ok = ok + excluded.ok,"
    " total = total + excluded.total, restarts = restarts + excluded.restarts"
)
_UPSERT_FINE = _UPSERT.format(table="uptime", col="bucket")
_UPSERT_HOURLY = _UPSERT.format(table="uptime_hourly", col="hour")

Buffer = dict[tuple[str, int], list[int]]  # (target, bucket) -> [ok, total, restarts]


@dataclass(frozen=True, slots=True)
class Counts:
    ok: int = 0
    total: int = 0
    restarts: int = 0

    @property
    def percent(self) -> float | None:
        """Uptime in percent, None without any counted result."""
        return round(100.0 * self.ok / self.total, 3) if self.total else None

    def __add__(self, other: Counts) -> Counts:
        return Counts(self.ok + other.ok, self.total + other.total, self.restarts + other.restarts)


@dataclass(frozen=True, slots=True)
class Bar:
    """One slot of the history bar: its start and the counts inside it."""

    start: datetime
    seconds: int
    counts: Counts


def _epoch(t: datetime) -> float:
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return t.timestamp()


class UptimeStore:
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
        if bucket_seconds <= 0 or HOUR % bucket_seconds:
            raise ValueError("bucket_seconds must be a positive divisor of 3600")
        self._owns = not isinstance(db, Database)
        self.db = db if isinstance(db, Database) else Database(db, components=(UPTIME,))
        self.bucket_seconds = bucket_seconds
        self.retention = timedelta(days=retention_days)
        self.fine_retention = max(fine_retention, WINDOWS["24h"] + timedelta(hours=1))
        self.flush_every = flush_every
        self.max_pending = max_pending
        self._now = now or (lambda: datetime.now(UTC))
        self._first_seen: dict[str, int] | None = None
        self._first_seen_at = 0.0
        self._monotonic = monotonic
        self._buf_lock = threading.Lock()
        self._pending: Buffer = {}
        self._inflight: dict[int, Buffer] = {}  # batches being written (still readable)
        self._next_flush = monotonic() + flush_every
        self._next_prune = 0.0  # the first flush prunes, then at most hourly
        # What the tables say per window / bar slot, computed by one query when a window
        # moves and kept current by folding in each written batch (under the db lock).
        self._aggs: dict[tuple[Any, ...], _Agg] = {}
        # The last day's 5-minute buckets the 24 h window and the bar are derived from
        # when they move on (kept current like the aggs; None until the first read).
        self._tail: FineTail | None = None
        # Re-entrant: a flush that finds the file damaged re-saves (flushes) from inside.
        self._agg_lock = threading.RLock()  # the aggs, _seq, _written; never held by a query
        self._seq = 0  # batches written so far
        self._epoch = 0  # bumped when stored rows go (prune, a replaced file)
        self._written: deque[tuple[int, Buffer]] = deque(maxlen=64)  # recent batches
        self._read_warned_at: float | None = None
        self.dropped = 0  # results (and restarts) lost because the buffer was full
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

    # ------------------------------------------------------------------ recording

    def bucket_of(self, t: datetime) -> int:
        e = int(_epoch(t))
        return e - e % self.bucket_seconds

    def record(self, target: str, when: datetime, up: bool) -> None:
        """Count one result of ``target`` at wall time ``when``."""
        self._add(target, when, 1 if up else 0, 1, 0)

    def record_restart(self, target: str, when: datetime) -> None:
        self._add(target, when, 0, 0, 1)

    def _add(self, target: str, when: datetime, ok: int, total: int, restarts: int) -> None:
        e = int(_epoch(when))
        key = (target, e - e % self.bucket_seconds)
        with self._buf_lock:
            counts = self._pending.get(key)
            if counts is None:
                self._pending[key] = [ok, total, restarts]
            else:
                counts[0] += ok
                counts[1] += total
                counts[2] += restarts
        if self._monotonic() >= self._next_flush:
            self.flush()

    def observe(self, event: Event) -> None:
        """Event-bus listener: counts check results and restarts."""
        if isinstance(event, CheckResult):
            if event.status is Status.SKIPPED:
                return
            up = event.status is not Status.FAILED
            if not up and event.startup and event.target not in self._ever_up:
                # A fresh install's first boot: nothing has been up to be down from yet
                # (a made-up 33 % for 24 h, 7 d and 30 d). Counted from the first up result.
                return
            if up:
                self._ever_up.add(event.target)
            self.record(event.target, event.finished, up)
        elif isinstance(event, RecoveryEvent) and event.kind is RecoveryKind.RESTART_STARTED:
            self.record_restart(event.target, event.time)

    def subscribe(self, bus: EventBus) -> Callable[[], None]:
        return bus.subscribe(self.observe)

    def flush(self) -> bool:
        """Write the buffered counts in one transaction; False when they were kept instead
        (the store cannot write now: they go with the next flush)."""
        with self._buf_lock:
            self._next_flush = self._monotonic() + self.flush_every
            batch, self._pending = self._pending, {}
            if batch:
                self._inflight[id(batch)] = batch
        if batch and not self._write(batch):
            return False
        if self._monotonic() >= self._next_prune:
            self.prune()
        return True

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
            self._seq += 1
            self._written.append((self._seq, batch))
            for agg in self._aggs.values():  # cached figures follow without a query
                for (t, b), c in batch.items():
                    agg.add(t, b, c[0], c[1], c[2])
            tail = self._tail
            if tail is not None:
                for (t, b), c in batch.items():
                    if not tail.add(t, b, c[0], c[1], c[2]):  # far ahead: read anew
                        self._tail = None
                        break
        return True

    def _keep(self, batch: Buffer) -> None:
        """Put a batch that could not be written back in the buffer, within its bound."""
        for key, c in batch.items():
            mine = self._pending.setdefault(key, [0, 0, 0])
            mine[0] += c[0]
            mine[1] += c[1]
            mine[2] += c[2]
        excess = len(self._pending) - self.max_pending
        if excess <= 0:
            return
        lost = 0
        for key in sorted(self._pending, key=lambda k: k[1])[:excess]:
            c = self._pending.pop(key)
            lost += c[1] + c[2]
        self.dropped += lost
        log.warning(
            "uptime buffer full while the store cannot write: %d oldest counts dropped", lost,
            extra={"event": "uptime_dropped", "dropped": lost},
        )

    def _resave(self) -> None:
        """The file was replaced: what is buffered goes into the fresh one."""
        with self._agg_lock:
            self._aggs.clear()
            self._tail = None
            self._epoch += 1
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
        e = int(_epoch(now - self.retention))
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
            if removed:  # figures that counted rows now gone are read anew
                for key in list(self._aggs):
                    if _low(key) < (hour_cut if key[0] == "uptime_hourly" else fine_cut):
                        del self._aggs[key]
                if self._tail is not None:
                    self._tail.advance(fine_cut)
                self._epoch += 1  # a query running now read rows that are gone
        return removed

    def close(self) -> None:
        """Flush what is buffered; close the Database only if this store opened it."""
        self.flush()
        if self._owns:
            self.db.close()

    # ------------------------------------------------------------------ reading

    def _buffered(self) -> list[tuple[str, int, int, int, int]]:
        with self._buf_lock:
            return [
                (t, b, c[0], c[1], c[2])
                for buf in (self._pending, *self._inflight.values())
                for (t, b), c in buf.items()
            ]

    def first_seen(self) -> dict[str, datetime]:
        """Per target, the start of the oldest bucket still kept: what "since" means for
        a window that reaches further back than the data. Read once per target and kept
        (it moves only when a prune drops old data, and then at most an hour late)."""
        mono = self._monotonic()
        if self._first_seen is None or mono - self._first_seen_at >= 3600:
            def query(c: sqlite3.Connection) -> list[Any]:
                return c.execute(
                    "SELECT target, MIN(b) FROM (SELECT target, MIN(bucket) AS b FROM uptime"
                    " GROUP BY target UNION ALL SELECT target, MIN(hour) FROM uptime_hourly"
                    " GROUP BY target) GROUP BY target").fetchall()
            try:
                rows = self.db.snapshot(query)
            except (StoreError, sqlite3.Error) as e:
                self._read_failed(e)
                rows = []
            self._first_seen = {str(t): int(b) for t, b in rows}
            self._first_seen_at = mono
        seen = dict(self._first_seen)
        for t, b, *_ in self._buffered():
            if t not in seen or b < seen[t]:
                seen[t] = b
                self._first_seen[t] = b
        return {t: datetime.fromtimestamp(b, UTC) for t, b in seen.items()}

    def _read(
        self,
        key: tuple[Any, ...],
        blank: Callable[[], _Agg],
        load: Callable[[], _Agg | None],
        held: Callable[[], _Agg | None] | None = None,
    ) -> dict[str, dict[Hashable, list[int]]]:
        """Per target and slot [ok, total, restarts] (fresh lists): what the tables hold
        plus what is buffered, as one consistent picture. The tables' part is cached per
        ``key`` and kept current by the flushes; a new key is derived by ``held`` from
        what is already in memory (under the agg lock, no SQL), else by ``load`` (SQL,
        then cached under the agg lock with the batches written meanwhile folded in)."""
        with self._agg_lock:
            agg = self._aggs.get(key)
            if agg is None and held is not None:
                agg = held()
            if agg is not None:
                out, buffered = self._picture(agg)
        if agg is None:
            agg = load()
            with self._agg_lock:
                if agg is None:  # Guardian's trouble: show what is buffered
                    agg = blank()
                out, buffered = self._picture(agg)
        for target, bucket, ok, total, restarts in buffered:
            for k in agg.place(bucket):  # outside: no entry, as the tables' part has none
                agg.put(out, target, k, ok, total, restarts)
        return out

    def _picture(self, agg: _Agg) -> tuple[dict[str, dict[Hashable, list[int]]], list[Any]]:
        """What ``agg`` holds and what is buffered (call with the agg lock held)."""
        out = {t: {k: c[:] for k, c in per.items()} for t, per in agg.sums.items()}
        return out, self._buffered()

    def _cache(self, key: tuple[Any, ...], agg: _Agg) -> _Agg:
        """Keep ``agg`` current from now on (call with the agg lock held). Windows move on:
        the oldest keys of the same kind go, but the last one stays to derive from."""
        kind = _kind(key)
        same = [k for k in self._aggs if _kind(k) == kind]
        for old in same[: max(0, len(same) - 1)]:
            del self._aggs[old]
        while len(self._aggs) >= 12:
            del self._aggs[next(iter(self._aggs))]
        self._aggs[key] = agg
        return agg

    def _query(
        self,
        query: Callable[[sqlite3.Connection], list[Any]],
        build: Callable[[list[Any]], _F],
        finish: Callable[[_F], _Agg],
        at_pin: Callable[[], None] | None = None,
    ) -> _Agg | None:
        """Read the tables on the read-only connection, without any lock a flush needs,
        and ``finish`` the result under the agg lock (it caches what it returns).

        The snapshot is pinned (its first read) under the agg lock, so the batches written
        after it are exactly those with a later sequence number: they are folded into what
        ``build`` made before ``finish`` sees it. None when the store cannot be read, or
        rows went (prune, a replaced file) during every try. ``_Stale`` from ``build``,
        the fold or ``finish`` means "derive no further: read in full" and is raised on.
        """
        pinned: list[int] = []

        def run(c: sqlite3.Connection) -> list[Any]:
            with self._agg_lock:
                c.execute("SELECT count(*) FROM guardian_schema").fetchone()
                pinned[:] = [self._seq, self._epoch]
                if at_pin is not None:
                    at_pin()
            return query(c)

        for _ in range(3):  # a prune (or a replaced file) during the query: read again
            try:
                rows = self.db.snapshot(run)
            except (StoreError, sqlite3.Error) as e:
                self._read_failed(e)
                return None
            got = build(rows)
            with self._agg_lock:
                seq, epoch = pinned
                later = [b for s, b in self._written if s > seq]
                if epoch != self._epoch or len(later) != self._seq - seq:
                    continue
                for batch in later:
                    for (t, b), c in batch.items():
                        if got.add(t, b, c[0], c[1], c[2]) is False:
                            raise _Stale
                return finish(got)
        self._read_failed(StoreError("the store changed during every read"))
        return None

    def _read_failed(self, exc: BaseException) -> None:
        now = self._monotonic()
        if self._read_warned_at is None or now - self._read_warned_at >= 60:
            self._read_warned_at = now
            log.warning("uptime not readable: %s", exc, extra={"event": "uptime_read_failed"})

    def _full(
        self, key: tuple[Any, ...], blank: Callable[[], _Agg],
        query: Callable[[sqlite3.Connection], list[Any]],
    ) -> _Agg | None:
        """The aggregate of ``key`` from one query of everything in its range."""
        def build(rows: list[Any]) -> _Agg:
            agg = blank()
            for target, slot, ok, total, restarts in rows:
                agg.add_slot(str(target), slot, int(ok), int(total), int(restarts))
            return agg

        return self._query(query, build, lambda agg: self._cache(key, agg))

    # The 5-minute buckets of the last day, for the 24 h window and the bar.

    def _held_tail(self, now_bucket: int) -> FineTail | None:
        """The tail moved on to ``now_bucket``'s 24 h window (agg lock held); None when
        there is none, or it moved by a whole window or more (asleep, a clock jump: the
        caller reads in full instead of trusting a day-old picture)."""
        tail = self._tail
        if tail is None:
            return None
        floor = now_bucket - _FINE_SPAN
        if floor - tail.floor >= _FINE_SPAN:
            self._tail = None
            return None
        tail.advance(floor)
        return tail

    def _fine(
        self, key: tuple[Any, ...], now_bucket: int, low: int, blank: Callable[[], _Agg],
        derive: Callable[[FineTail], dict[str, dict[Hashable, list[int]]]],
        query: Callable[[sqlite3.Connection], list[Any]],
    ) -> dict[str, dict[Hashable, list[int]]]:
        """A figure of the 5-minute buckets from ``low`` on: derived from the tail (read
        once, then kept current by the flushes; read anew when there is none, after a
        jump of a day or more, or when the clock went back), or read in full for a span
        longer than the day the tail holds."""
        def from_tail(tail: FineTail) -> _Agg:
            agg = blank()
            agg.sums = derive(tail)
            return self._cache(key, agg)

        def held() -> _Agg | None:
            tail = self._held_tail(now_bucket)
            return from_tail(tail) if tail is not None and low >= tail.floor else None

        def load() -> _Agg | None:
            floor = now_bucket - _FINE_SPAN
            if low >= floor:  # no tail (or one past low: the clock went back)
                try:
                    return self._query(
                        lambda c: c.execute(
                            "SELECT target, group_concat(bucket), group_concat(ok),"
                            " group_concat(total), group_concat(restarts)"
                            " FROM uptime WHERE bucket >= ? GROUP BY target", (floor,),
                        ).fetchall(),
                        lambda rows: _tail_of(floor, self.bucket_seconds, rows),
                        lambda tail: self._keep_tail(tail, from_tail),
                    )
                except _Stale:  # a bucket far ahead: not worth holding
                    pass
            return self._full(key, blank, query)

        return self._read(key, blank, load, held)

    def _keep_tail(self, tail: FineTail, then: Callable[[FineTail], _Agg]) -> _Agg:
        self._tail = tail
        return then(tail)

    def _hourly(
        self, key: tuple[Any, ...], names: list[str], starts: dict[str, int],
        place: Callable[[int], list[Hashable]],
        query: Callable[[sqlite3.Connection], list[Any]],
    ) -> dict[str, dict[Hashable, list[int]]]:
        """Windows of the hourly totals: when they moved on by less than a window, the
        previous figures less the hours that left (a query of about one row per target
        and window), else one query of every hour in them."""
        def load() -> _Agg | None:
            with self._agg_lock:
                prev = self._previous(key, names, starts)
            if prev is not None:
                try:
                    return self._shift(key, prev, names, starts, place)
                except _Stale:  # the previous figures went meanwhile
                    pass
            return self._full(key, lambda: _Agg(place), query)

        return self._read(key, lambda: _Agg(place), load)

    def _previous(
        self, key: tuple[Any, ...], names: list[str], starts: dict[str, int],
    ) -> tuple[Any, ...] | None:
        """The latest cached key of the same windows that ``key`` can be derived from."""
        best: tuple[Any, ...] | None = None
        for k in self._aggs:
            if k[0] != key[0] or len(k) != len(key):
                continue
            old = dict(zip(names, k[1:], strict=True))
            if all(0 <= starts[n] - old[n] < WINDOWS[n].total_seconds() for n in names) and (
                    best is None or k[1:] > best[1:]):
                best = k
        return best

    def _shift(
        self, key: tuple[Any, ...], prev: tuple[Any, ...], names: list[str],
        starts: dict[str, int], place: Callable[[int], list[Hashable]],
    ) -> _Agg | None:
        old = dict(zip(names, prev[1:], strict=True))
        targets: list[str] = []

        seen: list[_Agg | None] = [None]

        def at_pin() -> None:  # the targets the previous figures hold at the snapshot
            seen[0] = agg = self._aggs.get(prev)
            targets[:] = list(agg.sums) if agg is not None else []

        parts = " UNION ALL ".join(
            f"SELECT u.target, {i}, SUM(u.ok), SUM(u.total), SUM(u.restarts)"
            " FROM json_each(?1) AS j JOIN uptime_hourly AS u ON u.target = j.value"
            f" AND u.hour >= {int(old[n])} AND u.hour < {int(starts[n])} GROUP BY u.target"
            for i, n in enumerate(names) if starts[n] > old[n])

        def query(c: sqlite3.Connection) -> list[Any]:
            return c.execute(parts, (json.dumps(targets),)).fetchall()

        def leaving(bucket: int) -> list[Hashable]:
            at = bucket - bucket % HOUR
            return [n for n in names if old[n] <= at < starts[n]]

        def build(rows: list[Any]) -> _Agg:
            gone = _Agg(leaving)
            for target, i, ok, total, restarts in rows:
                gone.add_slot(str(target), names[i], int(ok), int(total), int(restarts))
            return gone

        def finish(gone: _Agg) -> _Agg:
            before = self._aggs.get(prev)
            if before is None or before is not seen[0]:  # evicted, or a prune, meanwhile
                raise _Stale
            agg = _Agg(place)
            for target, per in before.sums.items():
                less = gone.sums.get(target, {})
                mine: dict[Hashable, list[int]] = {}
                for n, c in per.items():
                    d = less.get(n)
                    mine[n] = [c[0] - d[0], c[1] - d[1], c[2] - d[2]] if d else c[:]
                if any(any(c) for c in mine.values()):  # else no row is left in the windows
                    agg.sums[target] = mine
            return self._cache(key, agg)

        return self._query(query, build, finish, at_pin)

    def _starts(self, now: datetime) -> dict[str, int]:
        """Each window's first bucket (5-minute) or hour (hourly totals)."""
        out: dict[str, int] = {}
        for name, span in WINDOWS.items():
            if name in _FINE_WINDOWS:
                out[name] = self.bucket_of(now - span)
            else:
                e = int(_epoch(now - span))
                out[name] = e - e % HOUR
        return out

    def windows(self, now: datetime | None = None) -> dict[str, dict[str, Counts]]:
        """Per target: Counts over each of :data:`WINDOWS` ending ``now``."""
        now = now or self._now()
        starts = self._starts(now)
        fine = [n for n in WINDOWS if n in _FINE_WINDOWS]
        coarse = [n for n in WINDOWS if n not in _FINE_WINDOWS]

        def sums(table: str, col: str, names: list[str]) -> str:
            parts = [
                f"SUM(CASE WHEN {col} >= {int(starts[n])} THEN {f} ELSE 0 END)"
                for n in names
                for f in ("ok", "total", "restarts")
            ]
            low = min(starts[n] for n in names)
            return f"SELECT target, {', '.join(parts)} FROM {table} WHERE {col} >= {int(low)}" \
                " GROUP BY target"

        def placer(names: list[str], hourly: bool) -> Callable[[int], list[Hashable]]:
            def place(bucket: int) -> list[Hashable]:
                at = bucket - bucket % HOUR if hourly else bucket
                return [n for n in names if at >= starts[n]]
            return place

        def full(table: str, col: str, names: list[str]) -> \
                Callable[[sqlite3.Connection], list[Any]]:
            def query(c: sqlite3.Connection) -> list[Any]:
                return [(r[0], n, *r[1 + 3 * i : 4 + 3 * i])
                        for r in c.execute(sums(table, col, names))
                        for i, n in enumerate(names)]
            return query

        def from_tail(tail: FineTail) -> dict[str, dict[Hashable, list[int]]]:
            out: dict[str, dict[Hashable, list[int]]] = {}
            for n in fine:
                for t, per in tail.sums(starts[n], n).items():
                    out.setdefault(t, {}).update(per)
            return out

        # Cached apart: the 24 h window moves every 5 minutes, the hourly ones each hour,
        # so a 5-minute move does not touch 31 days of hourly totals.
        data: dict[str, dict[Hashable, list[int]]] = {}
        fine_place = placer(fine, False)
        if fine:
            data = self._fine(
                ("uptime", *(starts[n] for n in fine)), self.bucket_of(now),
                min(starts[n] for n in fine), lambda: _Agg(fine_place), from_tail,
                full("uptime", "bucket", fine))
        if coarse:
            hourly = self._hourly(
                ("uptime_hourly", *(starts[n] for n in coarse)), coarse, starts,
                placer(coarse, True), full("uptime_hourly", "hour", coarse))
            for t, per in hourly.items():
                data.setdefault(t, {}).update(per)
        none = [0, 0, 0]
        return {
            t: {n: Counts(*per.get(n, none)) for n in WINDOWS}
            for t, per in data.items()
        }

    def bars(
        self, now: datetime | None = None, *, span: timedelta = timedelta(hours=24),
        slots: int = 48,
    ) -> dict[str, list[Bar]]:
        """Per target: ``slots`` equal slots covering ``span`` up to ``now``, oldest first."""
        b = self.bar_arrays(now, span=span, slots=slots)
        starts = [b.start + timedelta(seconds=b.seconds * i) for i in range(slots)]
        return {
            target: [Bar(starts[i], b.seconds, Counts(ok[i], total[i], restarts[i]))
                     for i in range(slots)]
            for target, (ok, total, restarts) in b.targets.items()
        }

    def bar_arrays(
        self, now: datetime | None = None, *, span: timedelta = timedelta(hours=24),
        slots: int = 48,
    ) -> BarArrays:
        """The bars of :meth:`bars` as three int lists per target (what the API sends: no
        object per slot, which at 1000 targets is 48 000 of them every request)."""
        now = now or self._now()
        slot = max(self.bucket_seconds, int(span.total_seconds()) // slots)
        slot -= slot % self.bucket_seconds
        end = self.bucket_of(now) + self.bucket_seconds
        first = end - slot * slots

        def place(bucket: int) -> list[Hashable]:
            i = (bucket - first) // slot
            return [i] if 0 <= i < slots else []

        def query(c: sqlite3.Connection) -> list[Any]:
            return c.execute(
                "SELECT target, (bucket - ?) / ? AS i, SUM(ok), SUM(total), SUM(restarts)"
                " FROM uptime WHERE bucket >= ? AND bucket < ? GROUP BY target, i",
                (first, slot, first, end),
            ).fetchall()

        data = self._fine(("bars", first, slot, slots), self.bucket_of(now), first,
                          lambda: _BarAgg(place, slots),
                          lambda tail: tail.slots(first, slot, slots), query)
        out = {target: (per[0], per[1], per[2]) for target, per in data.items()}
        return BarArrays(datetime.fromtimestamp(first, UTC), slot, out)


class _Stale(Exception):
    """What a window was to be derived from went meanwhile: read it in full instead."""


class _Foldable(Protocol):
    def add(self, target: str, bucket: int, ok: int, total: int, restarts: int) -> object: ...


_F = TypeVar("_F", bound=_Foldable)
_FINE_SPAN = int(WINDOWS["24h"].total_seconds())


def _kind(key: tuple[Any, ...]) -> tuple[Any, ...]:
    """Keys of one kind move on together (bars of one shape, one set of windows)."""
    return (key[0], *key[2:]) if key[0] == "bars" else (key[0], len(key))


def _low(key: tuple[Any, ...]) -> int:
    """The first bucket (or hour) a cached key's figures read."""
    return int(key[1]) if key[0] == "bars" else min(int(s) for s in key[1:])


def _tail_of(floor: int, step: int, rows: list[Any]) -> FineTail:
    tail = FineTail.from_rows(floor, step, 2 * _FINE_SPAN // step, rows)
    if tail is None:
        raise _Stale
    return tail


@dataclass(frozen=True, slots=True)
class BarArrays:
    """History bars of every target: slot i starts at ``start + i * seconds``."""

    start: datetime
    seconds: int
    targets: dict[str, tuple[list[int], list[int], list[int]]]  # ok, total, restarts


class _Agg:
    """Counts per target and slot (a window's name, a bar's index) from the tables."""

    __slots__ = ("place", "sums")

    def __init__(self, place: Callable[[int], list[Hashable]]) -> None:
        self.place = place
        self.sums: dict[str, dict[Hashable, list[int]]] = {}

    def add_slot(self, target: str, slot: Hashable, ok: int, total: int, restarts: int) -> None:
        self.put(self.sums, target, slot, ok, total, restarts)

    def put(
        self, sums: dict[str, dict[Hashable, list[int]]], target: str, slot: Hashable,
        ok: int, total: int, restarts: int,
    ) -> None:
        """Add counts to ``slot`` of ``target`` in ``sums`` (these or a copy of them)."""
        per = sums.get(target)
        if per is None:
            per = sums[target] = {}
        c = per.get(slot)
        if c is None:
            per[slot] = [ok, total, restarts]
        else:
            c[0] += ok
            c[1] += total
            c[2] += restarts

    def add(self, target: str, bucket: int, ok: int, total: int, restarts: int) -> None:
        for slot in self.place(bucket):
            self.add_slot(target, slot, ok, total, restarts)


class _BarAgg(_Agg):
    """Bar slots as three lists per target, ``{0: ok, 1: total, 2: restarts}``: a copy
    of them (each request) or a move (every 5 minutes) is three list copies per target,
    not a list per slot, and is sent as it is."""

    __slots__ = ("count",)

    def __init__(self, place: Callable[[int], list[Hashable]], count: int) -> None:
        super().__init__(place)
        self.count = count

    def put(
        self, sums: dict[str, dict[Hashable, list[int]]], target: str, slot: Hashable,
        ok: int, total: int, restarts: int,
    ) -> None:
        per = sums.get(target)
        if per is None:
            n = self.count
            per = sums[target] = {0: [0] * n, 1: [0] * n, 2: [0] * n}
        i = int(slot)  # type: ignore[call-overload]
        per[0][i] += ok
        per[1][i] += total
        per[2][i] += restarts
