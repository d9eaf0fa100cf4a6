"""Per-target uptime: ok/total counts of check results in fixed time buckets, persisted.

What a status page needs for "99.2 % over 7 days" and a history bar is far less than the
results themselves: one row per target per bucket (5 minutes by default) with how many
results came in, how many of them were up, and how many restarts Guardian started. That
keeps 30 days of 100 targets at under a million small rows, and the percentages honest
across Guardian restarts.

A result counts as *up* unless it FAILED (a busy ComfyUI is OK, a degraded one still
serves); SKIPPED results (not applicable here) are not counted at all. Failures during a
target's startup phase count as down: the service really was not serving.

The component works on a plain :class:`sqlite3.Connection` handed in (Guardian's one
store file), keeps its own table with its own migrations recorded in ``guardian_schema``
(like the breaker tables), and buffers counts in memory so a check result costs a dict
update, not a commit: the buffer is flushed when a bucket rolls over, at most every
``flush_every`` seconds, and on close.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from guardian.events import Event, EventBus, RecoveryEvent, RecoveryKind
from guardian.result import CheckResult, Status

log = logging.getLogger("guardian.uptime")

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
)
UPTIME_SCHEMA_VERSION = len(UPTIME_MIGRATIONS)

BUCKET_SECONDS = 300
RETENTION_DAYS = 31.0  # the longest window shown is 30 d
WINDOWS: dict[str, timedelta] = {
    "24h": timedelta(hours=24),
    "7d": timedelta(days=7),
    "30d": timedelta(days=30),
}


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
    """Bucketed ok/total/restart counts per target in the ``uptime`` table of ``db``.

    ``db`` is not closed here: its owner closes it. Calls may come from the event loop and
    from API worker threads; one lock serialises them.
    """

    def __init__(
        self,
        db: sqlite3.Connection,
        *,
        bucket_seconds: int = BUCKET_SECONDS,
        retention_days: float = RETENTION_DAYS,
        flush_every: float = 60.0,
        now: Callable[[], datetime] | None = None,
    ) -> None:
        if bucket_seconds <= 0:
            raise ValueError("bucket_seconds must be positive")
        self.db = db
        self.bucket_seconds = bucket_seconds
        self.retention = timedelta(days=retention_days)
        self.flush_every = flush_every
        self._now = now or (lambda: datetime.now(UTC))
        self._lock = threading.RLock()
        self._pending: dict[tuple[str, int], list[int]] = {}
        self._last_flush = _epoch(self._now())
        self._last_prune = 0.0
        self._current_bucket: int | None = None
        with self._lock:
            self._migrate()

    # ------------------------------------------------------------------ schema

    def _migrate(self) -> None:
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS guardian_schema ("
            " component TEXT PRIMARY KEY, version INTEGER NOT NULL)"
        )
        self.db.commit()
        version = self.schema_version
        if version > UPTIME_SCHEMA_VERSION:
            raise sqlite3.DatabaseError(
                f"uptime table is at schema v{version}, newer than this Guardian "
                f"(v{UPTIME_SCHEMA_VERSION}); upgrade Guardian or use another store"
            )
        for i in range(version, UPTIME_SCHEMA_VERSION):
            # executescript commits on its own: migration and version bump in one transaction.
            self.db.executescript(
                f"BEGIN IMMEDIATE;\n{UPTIME_MIGRATIONS[i]}\n"
                "INSERT INTO guardian_schema (component, version)"
                f" VALUES ('{UPTIME_COMPONENT}', {i + 1})"
                " ON CONFLICT(component) DO UPDATE SET version = excluded.version;\n"
                "COMMIT;"
            )

    @property
    def schema_version(self) -> int:
        row = self.db.execute(
            "SELECT version FROM guardian_schema WHERE component = ?", (UPTIME_COMPONENT,)
        ).fetchone()
        return 0 if row is None else int(row[0])

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
        bucket = self.bucket_of(when)
        with self._lock:
            counts = self._pending.setdefault((target, bucket), [0, 0, 0])
            counts[0] += ok
            counts[1] += total
            counts[2] += restarts
            rolled = self._current_bucket is not None and bucket > self._current_bucket
            if self._current_bucket is None or bucket > self._current_bucket:
                self._current_bucket = bucket
            if rolled or _epoch(self._now()) - self._last_flush >= self.flush_every:
                self.flush()

    def observe(self, event: Event) -> None:
        """Event-bus listener: counts check results and restarts."""
        if isinstance(event, CheckResult):
            if event.status is Status.SKIPPED:
                return
            self.record(event.target, event.finished, event.status is not Status.FAILED)
        elif isinstance(event, RecoveryEvent) and event.kind is RecoveryKind.RESTART_STARTED:
            self.record_restart(event.target, event.time)

    def subscribe(self, bus: EventBus) -> Callable[[], None]:
        return bus.subscribe(self.observe)

    def flush(self) -> None:
        """Write buffered counts; on a database error keep them for the next try."""
        with self._lock:
            self._last_flush = _epoch(self._now())
            if not self._pending:
                return
            rows = [(t, b, c[0], c[1], c[2]) for (t, b), c in self._pending.items()]
            try:
                with self.db:
                    self.db.executemany(
                        "INSERT INTO uptime (target, bucket, ok, total, restarts)"
                        " VALUES (?, ?, ?, ?, ?) ON CONFLICT(target, bucket) DO UPDATE SET"
                        " ok = ok + excluded.ok, total = total + excluded.total,"
                        " restarts = restarts + excluded.restarts",
                        rows,
                    )
            except sqlite3.Error as e:
                log.warning("uptime counts not written (%s): kept for the next flush", e,
                            extra={"event": "uptime_flush_failed"})
                return
            self._pending.clear()
            if self._last_flush - self._last_prune >= 3600:
                self.prune()

    def prune(self, now: datetime | None = None) -> int:
        """Drop buckets older than the retention; returns how many rows went."""
        cutoff = self.bucket_of((now or self._now()) - self.retention)
        with self._lock:
            self._last_prune = _epoch(now or self._now())
            try:
                with self.db:
                    cur = self.db.execute("DELETE FROM uptime WHERE bucket < ?", (cutoff,))
            except sqlite3.Error as e:
                log.warning("uptime prune failed: %s", e, extra={"event": "uptime_prune_failed"})
                return 0
            return cur.rowcount

    def close(self) -> None:
        """Flush what is buffered; the connection stays open (its owner closes it)."""
        self.flush()

    # ------------------------------------------------------------------ reading

    def _rows(self, since: int) -> dict[str, dict[int, Counts]]:
        out: dict[str, dict[int, Counts]] = {}
        with self._lock:
            try:
                rows = self.db.execute(
                    "SELECT target, bucket, ok, total, restarts FROM uptime WHERE bucket >= ?",
                    (since,),
                ).fetchall()
            except sqlite3.Error as e:  # Guardian's trouble: show what is buffered
                log.warning("uptime not readable: %s", e, extra={"event": "uptime_read_failed"})
                rows = []
            pending = [(t, b, *c) for (t, b), c in self._pending.items() if b >= since]
        for target, bucket, ok, total, restarts in [*rows, *pending]:
            per = out.setdefault(str(target), {})
            per[int(bucket)] = per.get(int(bucket), Counts()) + Counts(
                int(ok), int(total), int(restarts)
            )
        return out

    def windows(self, now: datetime | None = None) -> dict[str, dict[str, Counts]]:
        """Per target: Counts over each of :data:`WINDOWS` ending ``now``."""
        now = now or self._now()
        longest = max(WINDOWS.values())
        data = self._rows(self.bucket_of(now - longest))
        out: dict[str, dict[str, Counts]] = {}
        for target, buckets in data.items():
            out[target] = {}
            for name, span in WINDOWS.items():
                start = self.bucket_of(now - span)
                total = Counts()
                for b, c in buckets.items():
                    if b >= start:
                        total = total + c
                out[target][name] = total
        return out

    def bars(
        self, now: datetime | None = None, *, span: timedelta = timedelta(hours=24),
        slots: int = 48,
    ) -> dict[str, list[Bar]]:
        """Per target: ``slots`` equal slots covering ``span`` up to ``now``, oldest first."""
        now = now or self._now()
        slot = max(self.bucket_seconds, int(span.total_seconds()) // slots)
        slot -= slot % self.bucket_seconds
        end = self.bucket_of(now) + self.bucket_seconds
        first = end - slot * slots
        data = self._rows(first)
        out: dict[str, list[Bar]] = {}
        for target, buckets in data.items():
            sums = [Counts() for _ in range(slots)]
            for b, c in buckets.items():
                i = (b - first) // slot
                if 0 <= i < slots:
                    sums[i] = sums[i] + c
            out[target] = [
                Bar(datetime.fromtimestamp(first + i * slot, UTC), slot, c)
                for i, c in enumerate(sums)
            ]
        return out
