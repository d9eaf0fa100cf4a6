"""Uptime buckets in a real SQLite file: counting, windows, bars, persistence, retention."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from guardian.breakers import SqliteBreakerStore
from guardian.events import EventBus, RecoveryEvent, RecoveryKind
from guardian.result import CheckResult, Status
from guardian.uptime import UPTIME_SCHEMA_VERSION, UptimeStore

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


class Now:
    def __init__(self, t: datetime) -> None:
        self.t = t

    def __call__(self) -> datetime:
        return self.t


def result(target: str, status: Status, when: datetime, *, startup: bool = False) -> CheckResult:
    return CheckResult(target, "http", "http", status, "", {}, when, when, 0.01, startup=startup)


def open_store(path: Path, now: Now, **kw: float) -> tuple[sqlite3.Connection, UptimeStore]:
    db = sqlite3.connect(str(path))
    return db, UptimeStore(db, now=now, **kw)  # type: ignore[arg-type]


def test_counts_from_the_bus_and_windows(tmp_path: Path) -> None:
    now = Now(T0)
    db, store = open_store(tmp_path / "g.db", now)
    bus = EventBus()
    store.subscribe(bus)
    # 30 days ago .. now: one result per hour, the last 24 h with 6 failures.
    for h in range(30 * 24):
        when = T0 - timedelta(hours=h, minutes=1)
        failed = (h < 24 and h % 4 == 0) or 24 * 7 <= h < 24 * 7 + 12
        bus.publish(result("comfyui", Status.FAILED if failed else Status.OK, when))
    bus.publish(result("comfyui", Status.SKIPPED, T0))  # not counted
    bus.publish(result("comfyui", Status.DEGRADED, T0))  # up: it serves
    bus.publish(RecoveryEvent("comfyui", RecoveryKind.RESTART_STARTED, T0, attempt=1))
    bus.publish(RecoveryEvent("comfyui", RecoveryKind.RESTART_SUCCEEDED, T0, attempt=1))
    w = store.windows(now())["comfyui"]
    assert (w["24h"].ok, w["24h"].total) == (19, 25)
    assert w["24h"].percent == pytest.approx(76.0)
    assert (w["7d"].ok, w["7d"].total) == (7 * 24 + 1 - 6, 7 * 24 + 1)
    assert (w["30d"].ok, w["30d"].total) == (30 * 24 + 1 - 18, 30 * 24 + 1)
    assert w["24h"].restarts == 1 and w["30d"].restarts == 1
    db.close()


def test_counts_survive_a_restart_and_buffered_counts_are_read(tmp_path: Path) -> None:
    now = Now(T0)
    db, store = open_store(tmp_path / "g.db", now, flush_every=3600)
    store.record("panel", T0, True)
    store.record("panel", T0, False)
    # Not flushed yet (same bucket, flush_every not reached) but visible to readers.
    assert db.execute("SELECT COUNT(*) FROM uptime").fetchone()[0] == 0
    assert store.windows(now())["panel"]["24h"].total == 2
    store.close()
    db.close()
    db2, again = open_store(tmp_path / "g.db", now)
    assert (again.windows(now())["panel"]["24h"].ok, again.windows()["panel"]["24h"].total) == (
        1, 2)
    db2.close()


def test_a_new_bucket_flushes_the_old_one(tmp_path: Path) -> None:
    now = Now(T0)
    db, store = open_store(tmp_path / "g.db", now, flush_every=3600)
    store.record("panel", T0, True)
    store.record("panel", T0 + timedelta(minutes=5), True)
    rows = db.execute("SELECT bucket, ok, total FROM uptime ORDER BY bucket").fetchall()
    assert rows == [(int(T0.timestamp()), 1, 1), (int(T0.timestamp()) + 300, 1, 1)]
    db.close()


def test_bars_cover_24h_in_equal_slots(tmp_path: Path) -> None:
    now = Now(T0)
    db, store = open_store(tmp_path / "g.db", now)
    store.record("panel", T0 - timedelta(minutes=10), False)
    store.record("panel", T0 - timedelta(hours=3), True)
    store.record("panel", T0 - timedelta(hours=25), False)  # outside the bar
    bars = store.bars(now())["panel"]
    assert len(bars) == 48
    assert all(b.seconds == 1800 for b in bars)
    assert bars[-1].start <= T0 < bars[-1].start + timedelta(seconds=1800)
    assert sum(b.counts.total for b in bars) == 2
    assert bars[-1].counts.total == 1 and bars[-1].counts.percent == 0.0
    assert next(b for b in bars if b.counts.total == 0).counts.percent is None
    db.close()


def test_retention_prunes_old_buckets(tmp_path: Path) -> None:
    now = Now(T0)
    db, store = open_store(tmp_path / "g.db", now, retention_days=31)
    store.record("panel", T0 - timedelta(days=40), True)
    store.record("panel", T0 - timedelta(days=2), True)
    store.flush()  # the first flush prunes too, then at most hourly
    assert db.execute("SELECT COUNT(*) FROM uptime").fetchone()[0] == 1
    store.record("panel", T0 - timedelta(days=32), True)
    store.flush()
    assert db.execute("SELECT COUNT(*) FROM uptime").fetchone()[0] == 2
    assert store.prune(T0) == 1
    assert db.execute("SELECT COUNT(*) FROM uptime").fetchone()[0] == 1
    db.close()


def test_migration_recorded_beside_the_breakers(tmp_path: Path) -> None:
    path = tmp_path / "g.db"
    SqliteBreakerStore(path).close()
    db, store = open_store(path, Now(T0))
    rows = dict(db.execute("SELECT component, version FROM guardian_schema").fetchall())
    assert rows == {"breakers": 1, "uptime": UPTIME_SCHEMA_VERSION}
    assert store.schema_version == UPTIME_SCHEMA_VERSION
    db.close()
    # Opening again migrates nothing and keeps the data.
    db2, _ = open_store(path, Now(T0))
    assert dict(db2.execute("SELECT component, version FROM guardian_schema").fetchall())[
        "uptime"] == UPTIME_SCHEMA_VERSION
    db2.close()


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "g.db"
    db, _ = open_store(path, Now(T0))
    db.execute("UPDATE guardian_schema SET version = 99 WHERE component = 'uptime'")
    db.commit()
    with pytest.raises(sqlite3.DatabaseError, match="newer than this Guardian"):
        UptimeStore(db)
    db.close()


def test_a_failing_write_keeps_the_counts(tmp_path: Path) -> None:
    now = Now(T0)
    db, store = open_store(tmp_path / "g.db", now, flush_every=3600)
    store.record("panel", T0, True)
    db.execute("DROP TABLE uptime")
    store.flush()  # logged, not raised; counts kept
    assert store.windows(now())["panel"]["24h"].total == 1
    db.close()
