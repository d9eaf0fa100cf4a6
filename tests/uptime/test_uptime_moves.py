"""Windows that move on are derived from the figures already read, and stay identical to
a full read: days of random results on a simulated clock against a real SQLite file,
compared at every 5-minute and hourly move with a fresh store reading the same history."""

from __future__ import annotations

import random
import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from guardian.core.events import RecoveryEvent, RecoveryKind
from guardian.core.result import CheckResult, Status
from guardian.store.db import Database
from guardian.uptime.store import UPTIME, UptimeStore

T0 = datetime(2026, 3, 1, 11, 47, 13, tzinfo=UTC)
TARGETS = ["comfyui", "panel", "proxy", "worker"]
STATUSES = [Status.OK] * 6 + [Status.FAILED, Status.DEGRADED, Status.SKIPPED]


class Clock:
    """Wall time and the monotonic time the flush period runs on, moved by hand."""

    def __init__(self, t: datetime) -> None:
        self.t = t
        self.mono = 1000.0

    def now(self) -> datetime:
        return self.t

    def monotonic(self) -> float:
        return self.mono

    def advance(self, seconds: float) -> None:
        self.t += timedelta(seconds=seconds)
        self.mono += seconds


def history(rng: random.Random) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """31 days of hourly totals and 25 h of 5-minute buckets, with gaps, a target that
    only ran 7-8 days ago and one whose last results are about to leave the 30 d window."""
    end = int(T0.timestamp())
    fine, hourly = [], []
    for t in TARGETS:
        for i in range(1, 300):
            if rng.random() < 0.9:  # gaps: Guardian was not running, or nothing counted
                total = rng.randint(1, 15)
                fine.append((t, end - end % 300 - 300 * i, rng.randint(0, total), total,
                             int(rng.random() < 0.05)))
        for h in range(1, 31 * 24 + 1):
            if rng.random() < 0.95:
                total = rng.randint(1, 180)
                hourly.append((t, end - end % 3600 - 3600 * h, rng.randint(0, total), total,
                               int(rng.random() < 0.1)))
    base = end - end % 3600
    hourly += [("retired", base - 3600 * h, 100, 120, 1) for h in range(7 * 24, 8 * 24)]
    hourly += [("ancient", base - 3600 * h, 5, 9, 0) for h in range(30 * 24 - 30, 30 * 24 + 1)]
    return fine, hourly


def fill(path: Path, fine: list[tuple[Any, ...]], hourly: list[tuple[Any, ...]]) -> None:
    UptimeStore(path).close()  # the tables, from the migrations
    con = sqlite3.connect(path)
    with con:
        con.executemany("INSERT INTO uptime VALUES (?, ?, ?, ?, ?)", fine)
        con.executemany("INSERT INTO uptime_hourly VALUES (?, ?, ?, ?, ?)", hourly)
    con.close()


class Traced:
    """Counts the statements the store's reads run, whatever connection they get."""

    def __init__(self, db: Database) -> None:
        self.statements: list[str] = []
        snapshot = db.snapshot

        def traced(fn: Callable[[sqlite3.Connection], Any]) -> Any:
            def run(c: sqlite3.Connection) -> Any:
                c.set_trace_callback(self.statements.append)
                try:
                    return fn(c)
                finally:
                    c.set_trace_callback(None)
            return snapshot(run)

        db.snapshot = traced  # type: ignore[method-assign]

    def count(self, part: str) -> int:
        return sum(part in s for s in self.statements)


@pytest.mark.slow
def test_moving_windows_match_a_full_read_over_days(tmp_path: Path) -> None:
    rng = random.Random(20261202)
    clock = Clock(T0)
    main_path, ref_path = tmp_path / "guardian.db", tmp_path / "reference.db"
    fine, hourly = history(rng)
    fill(main_path, fine, hourly)
    fill(ref_path, fine, hourly)

    def open_main() -> tuple[Database, UptimeStore, Traced]:
        db = Database(main_path, recover=True, now=clock.now, components=(UPTIME,))
        traced = Traced(db)
        return db, UptimeStore(db, now=clock.now, monotonic=clock.monotonic), traced

    db, store, traced = open_main()
    ref = UptimeStore(ref_path, now=clock.now, monotonic=clock.monotonic)
    counts = {"tail": 0, "shift": 0, "hourly_full": 0}

    def tally() -> None:
        counts["tail"] += traced.count("group_concat")
        counts["shift"] += traced.count("json_each")
        counts["hourly_full"] += traced.count("FROM uptime_hourly WHERE hour >=")
        traced.statements.clear()

    def compare() -> None:
        """The store's figures against a fresh store's full read of the same history."""
        nonlocal ref
        now = clock.now()
        got = (store.windows(now), store.bar_arrays(now), store.bar_arrays(now, slots=288))
        ref.close()  # written out; the fresh one reads everything from the file
        ref = UptimeStore(ref_path, now=clock.now, monotonic=clock.monotonic)
        want = (ref.windows(now), ref.bar_arrays(now), ref.bar_arrays(now, slots=288))
        assert got[0] == want[0], now
        assert got[1] == want[1], now
        assert got[2] == want[2], now
        compared.append(now)

    def publish(event: CheckResult | RecoveryEvent) -> None:
        store.observe(event)
        ref.observe(event)

    compared: list[datetime] = []
    failed_flushes = 0
    events = {  # simulated hour -> what happens then
        5: "flush_fails", 6: "space_again", 14: "read_fails", 20: "restart",
        31: "sleep_2h", 40: "new_target", 44: "clock_back", 47: "sleep_26h",
    }
    targets = list(TARGETS)
    fail_next_hour = False

    def interrupt(c: sqlite3.Connection) -> None:
        c.set_progress_handler(lambda: 1, 1)  # its next statement is interrupted
    last_bucket, last_hour, done = None, None, set()
    compare()
    while clock.t < T0 + timedelta(days=2, hours=30):
        clock.advance(rng.uniform(5, 40))
        hour = int((clock.t - T0).total_seconds() // 3600)
        event = events.get(hour)
        if event is not None and event not in done:
            done.add(event)
            if event == "flush_fails":  # the disk is full: flushes keep counts in memory
                n = int(db.connection.execute("PRAGMA page_count").fetchone()[0])
                db.connection.execute(f"PRAGMA max_page_count = {n}")
                for i in range(100):  # new rows that need new pages
                    publish(CheckResult(f"burst{i}", "http", "http", Status.OK, "", {},
                                        clock.t, clock.t, 0.01))
                failed_flushes += not store.flush()
            elif event == "space_again":
                db.connection.execute("PRAGMA max_page_count = 1073741823")
            elif event == "read_fails":  # the hourly move's read will be interrupted
                fail_next_hour = True
            elif event == "restart":  # Guardian restarts: everything read anew
                tally()
                store.close()
                db.close()
                db, store, traced = open_main()
                db.snapshot(interrupt)  # and its first read of the buckets fails
                assert store.bar_arrays(clock.t).targets.keys() <= {
                    k[0] for k in store._pending}
            elif event == "sleep_2h":  # moved by less than the windows: still derived
                clock.advance(2 * 3600)
            elif event == "clock_back":  # the wall clock set back 40 minutes
                clock.t -= timedelta(minutes=40)
            elif event == "new_target":
                targets.append("newcomer")
            elif event == "sleep_26h":  # asleep longer than the 24 h window
                clock.advance(26 * 3600)
        for t in targets:
            if rng.random() < 0.7:
                status = rng.choice(STATUSES)
                ahead = timedelta(seconds=rng.choice([0, 0, 0, 0, 30, 400]))  # clocks differ
                when = clock.t + ahead
                publish(CheckResult(t, "http", "http", status, "", {}, when, when, 0.01,
                                    startup=rng.random() < 0.05))
            if rng.random() < 0.003:
                publish(RecoveryEvent(t, RecoveryKind.RESTART_STARTED, clock.t, attempt=1))
        bucket = store.bucket_of(clock.t)
        if bucket != last_bucket or int(clock.t.timestamp()) // 3600 != last_hour:
            if fail_next_hour and int(clock.t.timestamp()) // 3600 != last_hour:
                fail_next_hour = False
                db.snapshot(interrupt)  # the read of the hours that left fails
                before = store.windows(clock.t)
                assert all(w["30d"].total <= 10 for w in before.values())  # the buffer only
            last_bucket, last_hour = bucket, int(clock.t.timestamp()) // 3600
            compare()
        elif rng.random() < 0.02:  # between moves: cached figures plus the buffer
            compare()
    tally()
    store.close()
    db.close()
    ref.close()
    assert failed_flushes == 1
    assert len(compared) > 2 * 288
    # The moves were derived, not read: the last day's buckets were read at the start,
    # after the failed read, the restart and the long sleep; the hourly totals in full
    # only then too, every other hourly move from the hours that left.
    assert counts["tail"] <= 5, counts  # and once after the clock went back
    assert counts["hourly_full"] <= 5, counts
    assert counts["shift"] >= 2 * 24, counts
