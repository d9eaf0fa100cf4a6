"""Uptime buckets in a real SQLite file, as a component of Guardian's one Database:
counting, windows, bars, batched writes, retention, migrations, full disk, damage."""

from __future__ import annotations

import logging
import sqlite3
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from guardian.core.events import EventBus, RecoveryEvent, RecoveryKind
from guardian.core.result import CheckResult, Status
from guardian.incidents.store import INCIDENTS, SCHEMA_VERSION, Store
from guardian.recovery.breakers import BREAKERS, SqliteBreakerStore
from guardian.store.db import PROBLEM_KEY, Database, StoreNewer
from guardian.uptime.store import UPTIME, UPTIME_SCHEMA_VERSION, UptimeStore

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


class Now:
    def __init__(self, t: datetime) -> None:
        self.t = t

    def __call__(self) -> datetime:
        return self.t


class Mono:
    """The monotonic clock the flush period runs on (FakeClock's role, by hand)."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class Problems:
    def __init__(self) -> None:
        self.problems: dict[str, str] = {}

    def set_problem(self, key: str, message: str) -> None:
        self.problems[key] = message

    def clear_problem(self, key: str) -> None:
        self.problems.pop(key, None)


def result(target: str, status: Status, when: datetime, *, startup: bool = False) -> CheckResult:
    return CheckResult(target, "http", "http", status, "", {}, when, when, 0.01, startup=startup)


def rows(path: Path, sql: str) -> list[tuple[object, ...]]:
    """What another process (the CLI, a tool) sees in the file."""
    con = sqlite3.connect(path)
    try:
        return [tuple(r) for r in con.execute(sql).fetchall()]
    finally:
        con.close()


def daemon_db(path: Path, problems: Problems | None = None) -> Database:
    return Database(path, problems=problems, recover=True, now=lambda: T0,
                    components=(INCIDENTS, BREAKERS, UPTIME))


def test_counts_from_the_bus_and_windows(tmp_path: Path) -> None:
    now = Now(T0)
    store = UptimeStore(tmp_path / "g.db", now=now)
    bus = EventBus()
    store.subscribe(bus)
    # 30 days ago .. now: one result per hour, the last 24 h with 6 failures.
    for h in range(30 * 24):
        when = T0 - timedelta(hours=h, minutes=1)
        failed = (h < 24 and h % 4 == 0) or 24 * 7 <= h < 24 * 7 + 12
        bus.publish(result("comfyui", Status.FAILED if failed else Status.OK, when))
    bus.publish(result("comfyui", Status.SKIPPED, T0))  # not counted
    bus.publish(result("comfyui", Status.DEGRADED, T0))  # up: it serves
    bus.publish(result("comfyui", Status.FAILED, T0, startup=True))  # booting: not serving
    bus.publish(RecoveryEvent("comfyui", RecoveryKind.RESTART_STARTED, T0, attempt=1))
    bus.publish(RecoveryEvent("comfyui", RecoveryKind.RESTART_SUCCEEDED, T0, attempt=1))
    for flushed in (False, True):  # the same figures from the buffer and from the tables
        if flushed:
            assert store.flush()
        w = store.windows(now())["comfyui"]
        assert (w["24h"].ok, w["24h"].total) == (19, 26)
        assert w["24h"].percent == pytest.approx(100 * 19 / 26, abs=1e-3)
        assert (w["7d"].ok, w["7d"].total) == (7 * 24 + 1 - 6, 7 * 24 + 2)
        assert (w["30d"].ok, w["30d"].total) == (30 * 24 + 1 - 18, 30 * 24 + 2)
        assert w["24h"].restarts == 1 and w["30d"].restarts == 1
    store.close()


def test_counts_survive_a_restart_and_buffered_counts_are_read(tmp_path: Path) -> None:
    now, path = Now(T0), tmp_path / "g.db"
    store = UptimeStore(path, now=now, flush_every=3600)
    store.record("panel", T0, True)
    store.record("panel", T0, False)
    # Not flushed yet (flush_every not reached) but visible to readers.
    assert rows(path, "SELECT COUNT(*) FROM uptime") == [(0,)]
    assert store.windows(now())["panel"]["24h"].total == 2
    store.close()
    again = UptimeStore(path, now=now)
    day = again.windows(now())["panel"]["24h"]
    assert (day.ok, day.total) == (1, 2)
    again.close()


def test_writes_are_batched_on_the_monotonic_clock(tmp_path: Path) -> None:
    """A result is a dict update; at most every flush_every one transaction writes one
    row per (target, 5-minute bucket) and one per (target, hour), whatever the rate."""
    path, mono = tmp_path / "g.db", Mono()
    store = UptimeStore(path, now=Now(T0), monotonic=mono, flush_every=60)
    statements: list[str] = []
    store.db.connection.set_trace_callback(statements.append)
    for target in range(100):  # 100 targets, one result a second for 59 s
        for s in range(59):
            store.record(f"t{target}", T0 + timedelta(seconds=s), s % 10 != 0)
    assert statements == [] and rows(path, "SELECT COUNT(*) FROM uptime") == [(0,)]
    mono.t += 60
    store.record("t0", T0 + timedelta(seconds=59), True)  # the first after the period
    assert statements.count("BEGIN IMMEDIATE") == 2  # the batch, then the first prune
    assert rows(path, "SELECT COUNT(*), SUM(total), SUM(ok) FROM uptime") == [
        (100, 100 * 59 + 1, 100 * 53 + 1)]
    assert rows(path, "SELECT COUNT(*), SUM(total) FROM uptime_hourly") == [(100, 100 * 59 + 1)]
    statements.clear()
    store.record("t1", T0 + timedelta(seconds=61), True)
    assert statements == []  # the next period has not run out
    store.close()
    assert rows(path, "SELECT total FROM uptime WHERE target = 't1'") == [(60,)]


def test_bars_cover_24h_in_equal_slots(tmp_path: Path) -> None:
    now = Now(T0)
    store = UptimeStore(tmp_path / "g.db", now=now)
    store.record("panel", T0 - timedelta(minutes=10), False)
    store.record("panel", T0 - timedelta(hours=3), True)
    store.record("panel", T0 - timedelta(hours=25), False)  # outside the bar
    for flushed in (False, True):
        if flushed:
            store.flush()
        bars = store.bars(now())["panel"]
        assert len(bars) == 48
        assert all(b.seconds == 1800 for b in bars)
        assert bars[-1].start <= T0 < bars[-1].start + timedelta(seconds=1800)
        assert sum(b.counts.total for b in bars) == 2
        assert bars[-1].counts.total == 1 and bars[-1].counts.percent == 0.0
        assert next(b for b in bars if b.counts.total == 0).counts.percent is None
        arrays = store.bar_arrays(now())  # what the API sends: the same bars as int lists
        ok, total, restarts = arrays.targets["panel"]
        assert arrays.start == bars[0].start and arrays.seconds == 1800
        assert total == [b.counts.total for b in bars] and ok == [b.counts.ok for b in bars]
        assert restarts == [0] * 48
    store.close()


def test_reads_query_the_file_when_a_window_moves_not_per_request(tmp_path: Path) -> None:
    """The status page of many viewers costs one read of the file, then a flush folds its
    batch into the figures already read, and a 5-minute move derives the 24 h window and
    the bar from the buckets already read (no query)."""
    mono, now = Mono(), Now(T0)
    store = UptimeStore(tmp_path / "g.db", now=now, monotonic=mono)
    store.record("panel", T0 - timedelta(days=3), True)
    store.record("panel", T0, True)
    store.flush()
    selects: list[str] = []

    def trace(s: str) -> None:
        if s.lstrip().startswith("SELECT") and "FROM uptime" in s:
            selects.append(s)

    # Reads aggregate on the read-only connection: trace that one (and the writer's).
    store.db.snapshot(lambda c: c.set_trace_callback(trace))
    store.db.connection.set_trace_callback(trace)
    for _ in range(50):
        store.windows(now())
        store.bars(now())
    assert len(selects) == 2  # the last day's buckets (24 h, bar), 7 d + 30 d hourly totals
    store.record("panel", T0, False)  # buffered counts are added without a query
    assert store.windows(now())["panel"]["24h"].total == 2 and len(selects) == 2
    assert store.flush()
    w = store.windows(now())["panel"]
    assert len(selects) == 2  # folded in, not read again
    assert [(w[n].ok, w[n].total) for n in ("24h", "7d", "30d")] == [(1, 2), (2, 3), (2, 3)]
    assert sum(b.counts.total for b in store.bars(now())["panel"]) == 2
    # The same figures as a fresh read of the file.
    again = UptimeStore(store.db, now=now)
    assert again.windows(now()) == store.windows(now())
    assert again.bars(now()) == store.bars(now())
    # The fresh store's own first read, and at its open which targets were ever up.
    assert len(selects) == 2 + 3
    store.bars(now() + timedelta(minutes=5))  # the bar moved on: from the buckets held
    # The 24 h window moved on, 7 d / 30 d (taken at the hour) did not: no query at all.
    later = store.windows(now() + timedelta(minutes=5))
    assert len(selects) == 2 + 3
    assert later == again.windows(now() + timedelta(minutes=5))
    store.close()


def test_retention_keeps_buckets_two_days_and_hourly_totals_31(tmp_path: Path) -> None:
    path, now = tmp_path / "g.db", Now(T0)
    store = UptimeStore(path, now=now, retention_days=31)
    for days in (40, 20, 3, 0.5):
        store.record("panel", T0 - timedelta(days=days), True)
    store.flush()  # the first flush prunes too, then at most hourly
    assert rows(path, "SELECT COUNT(*) FROM uptime") == [(1,)]  # 12 h ago
    assert rows(path, "SELECT COUNT(*) FROM uptime_hourly") == [(3,)]
    w = store.windows(now())["panel"]
    assert (w["24h"].total, w["7d"].total, w["30d"].total) == (1, 2, 3)
    store.record("panel", T0 - timedelta(days=32), True)
    store.flush()
    assert rows(path, "SELECT COUNT(*) FROM uptime_hourly") == [(4,)]
    assert store.prune(T0) == 2  # the fine bucket 32 d ago and its hourly total
    assert rows(path, "SELECT COUNT(*) FROM uptime_hourly") == [(3,)]
    store.close()


def test_migration_recorded_beside_the_others_in_one_file(tmp_path: Path) -> None:
    path = tmp_path / "g.db"
    db = daemon_db(path)
    Store(db)
    SqliteBreakerStore(db)
    store = UptimeStore(db, now=Now(T0))
    assert store.db is db  # one connection, one owner
    assert rows(path, "SELECT component, version FROM guardian_schema ORDER BY 1") == [
        ("breakers", 1), ("incidents", SCHEMA_VERSION), ("uptime", UPTIME_SCHEMA_VERSION)]
    store.close()  # the shared Database stays open: its owner closes it
    assert db.version("uptime") == UPTIME_SCHEMA_VERSION
    db.close()


def test_a_v1_file_gets_hourly_totals_from_its_buckets(tmp_path: Path) -> None:
    """A file written by the Guardian before v2 (5-minute buckets for 31 days)."""
    path = tmp_path / "g.db"
    con = sqlite3.connect(path)
    con.executescript(
        "CREATE TABLE guardian_schema (component TEXT PRIMARY KEY, version INTEGER NOT NULL);"
        f"{UPTIME.migrations[0]}"
        "INSERT INTO guardian_schema VALUES ('uptime', 1);"
    )
    old = int(T0.timestamp())
    con.executemany(
        "INSERT INTO uptime VALUES ('comfyui', ?, ?, 1, 0)",
        [(old - 300 * i, 0 if i % 12 == 0 else 1) for i in range(1, 12 * 24 * 10)],
    )
    con.commit()
    con.close()
    store = UptimeStore(path, now=Now(T0))
    assert store.schema_version == UPTIME_SCHEMA_VERSION == 2
    n = 12 * 24 * 10 - 1  # results 5 min .. 10 days ago
    assert rows(path, "SELECT SUM(total), COUNT(*) FROM uptime_hourly") == [(n, 24 * 10)]
    w = store.windows(Now(T0)())["comfyui"]
    assert (w["30d"].ok, w["30d"].total) == (n - (24 * 10 - 1), n)
    assert (w["24h"].ok, w["24h"].total) == (288 - 24, 288)
    store.close()


def test_a_newer_schema_is_refused_and_the_file_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "g.db"
    UptimeStore(path).close()
    con = sqlite3.connect(path)
    con.execute("UPDATE guardian_schema SET version = 99 WHERE component = 'uptime'")
    con.commit()
    con.close()
    with pytest.raises(StoreNewer, match="newer than this Guardian"):
        UptimeStore(path)
    # The daemon keeps supervising on memory and says why; the file is not touched.
    problems = Problems()
    db = daemon_db(path, problems)
    store = UptimeStore(db, now=Now(T0))
    store.record("panel", T0, True)
    assert store.flush() and store.windows(T0)["panel"]["24h"].total == 1
    assert not db.persistent and "newer" in problems.problems[PROBLEM_KEY]
    db.close()
    assert rows(path, "SELECT version FROM guardian_schema WHERE component = 'uptime'") == [
        (99,)]


def fill_file_to_the_brim(db: Database) -> None:
    """SQLITE_FULL from now on: the file may not grow past its current size."""
    n = int(db.connection.execute("PRAGMA page_count").fetchone()[0])
    db.connection.execute(f"PRAGMA max_page_count = {n}")


def test_a_full_disk_keeps_counts_in_memory_within_a_bound(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path, problems, now = tmp_path / "g.db", Problems(), Now(T0)
    con = sqlite3.connect(path)
    con.execute("PRAGMA page_size = 512")
    con.execute("VACUUM")
    con.close()
    db = daemon_db(path, problems)
    store = UptimeStore(db, now=now, max_pending=300)
    store.flush()
    fill_file_to_the_brim(db)
    for i in range(400):  # 400 buckets of one target; the oldest 100 cannot be kept
        store.record("panel", T0 - timedelta(minutes=5 * i), True)
    with caplog.at_level(logging.WARNING):
        assert not store.flush()
    assert "disk full" in problems.problems[PROBLEM_KEY]  # Guardian's trouble, shown
    assert store.dropped == 100
    assert any(getattr(r, "event", "") == "uptime_dropped" for r in caplog.records)
    assert store.windows(now())["panel"]["24h"].total == 289  # 24 h ago .. now, kept
    db.connection.execute("PRAGMA max_page_count = 1073741823")  # space again
    store.record("panel", T0, False)
    assert store.flush() and PROBLEM_KEY not in problems.problems
    assert rows(path, "SELECT SUM(total) FROM uptime") == [(301,)]
    db.close()


def test_damage_mid_run_moves_the_file_aside_and_buffered_counts_go_to_the_fresh_one(
    tmp_path: Path,
) -> None:
    path, problems, now = tmp_path / "g.db", Problems(), Now(T0)
    db = daemon_db(path, problems)
    Store(db)
    store = UptimeStore(db, now=now)
    for i in range(2000):
        store.record(f"t{i % 50}", T0 - timedelta(minutes=5 * (i // 50)), True)
    assert store.flush()
    db.connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    size = path.stat().st_size
    with open(path, "r+b") as f:  # every page but the header zeroed (`dd conv=notrunc`)
        f.seek(4096)
        f.write(b"\0" * (size - 4096))
    with sqlite3.connect(path) as other:  # another writer: our page cache is dropped
        other.execute("PRAGMA application_id = 7")
    other.close()
    store.record("panel", T0, True)
    assert store.flush()  # found the damage, moved the file aside, wrote on a fresh one
    assert len(db.moved_to) == 1 and db.moved_to[0].exists()
    assert "damaged" in problems.problems[PROBLEM_KEY]
    assert set(store.windows(now())) == {"panel"}  # the history went with the damaged file
    assert store.windows(now())["panel"]["24h"].total == 1
    db.close()
    assert rows(path, "SELECT target, total FROM uptime") == [("panel", 1)]


def test_a_reader_thread_never_sees_a_count_twice_or_lose_one(tmp_path: Path) -> None:
    """The API reads on its own thread while the loop records and flushes."""
    mono, now = Mono(), Now(T0)
    store = UptimeStore(tmp_path / "g.db", now=now, monotonic=mono, flush_every=0.5)
    seen: list[int] = []
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            w = store.windows(now())
            seen.append(w["panel"]["24h"].total if "panel" in w else 0)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for i in range(3000):
            mono.t += 0.01  # a flush every 50 results
            store.record("panel", T0, i % 3 != 0)
    finally:
        stop.set()
        reader.join(10)
    assert seen and seen == sorted(seen)  # never more, then fewer: no double count
    assert max(seen) <= 3000
    assert store.windows(now())["panel"]["24h"].total == 3000
    store.close()


def test_a_flush_completes_while_an_uncached_read_aggregates(tmp_path: Path) -> None:
    """The aggregation runs on the read-only connection without the writer's lock: a
    flush from the event loop finishes while it runs, and the read's figures still count
    that batch exactly once (folded in after the snapshot, not read from the buffer too)."""
    mono, now = Mono(), Now(T0)
    store = UptimeStore(tmp_path / "g.db", now=now, monotonic=mono)
    for i in range(200):
        store.record(f"t{i % 20}", T0 - timedelta(minutes=5 * (i // 20)), True)
    assert store.flush()
    inside, release = threading.Event(), threading.Event()

    def stall() -> int:  # SQLite calls this during the aggregation: park it there once
        if not inside.is_set():
            inside.set()
            release.wait(30)
        return 0

    got: list[dict[str, dict[str, object]]] = []

    def read() -> None:  # each thread reads on its own connection: park the reader's
        store.db.snapshot(lambda c: c.set_progress_handler(stall, 50))
        got.append(store.windows(now()))  # type: ignore[arg-type]

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert inside.wait(30)
        store.record("t0", T0, False)
        flusher = threading.Thread(target=store.flush, daemon=True)
        flusher.start()
        flusher.join(30)
        assert not flusher.is_alive(), "the flush waited for the read"
        assert reader.is_alive()
    finally:
        release.set()
        reader.join(30)
    w = got[0]["t0"]["24h"]
    assert (w.ok, w.total) == (10, 11)  # type: ignore[attr-defined]
    assert store.windows(now())["t0"]["24h"] == w  # the cached figures agree
    store.db.snapshot(lambda c: c.set_progress_handler(None, 0))
    store.close()


def test_a_fresh_install_counts_uptime_from_the_first_up_result(tmp_path: Path) -> None:
    """Issue 22: 20 s after a fresh start the page showed 33 % for 24 h, 7 d and 30 d: the
    first boot's startup failures counted as downtime of a service never up before."""
    now, path = Now(T0), tmp_path / "g.db"
    store = UptimeStore(path, now=now)
    bus = EventBus()
    store.subscribe(bus)
    for s in range(10):  # the first boot: connection refused while it loads
        bus.publish(result("comfyui", Status.FAILED, T0 - timedelta(seconds=20 - s),
                           startup=True))
    bus.publish(result("comfyui", Status.OK, T0 - timedelta(seconds=5)))
    w = store.windows(now())["comfyui"]
    assert (w["24h"].ok, w["24h"].total) == (1, 1) and w["30d"].percent == 100.0
    store.close()
    # Once it has been up, a later boot (after a restart) is downtime, also after a reopen.
    again = UptimeStore(path, now=now)
    again.subscribe(bus2 := EventBus())
    bus2.publish(result("comfyui", Status.FAILED, T0, startup=True))
    w = again.windows(now())["comfyui"]
    assert (w["24h"].ok, w["24h"].total) == (1, 2)
    again.close()
