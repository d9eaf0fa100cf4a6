"""What uptime costs at scale: recording a result, a flush, the status page's reads, pruning.

Uptime is a component of Guardian's store (``guardian.uptime.store``): a result is counted in
memory, and one transaction every ``flush_every`` (60 s) writes about two upserts per
target. This measures, for 10 / 100 / 1000 targets with 30 days of history already in
the file (5-minute buckets for 25 h, hourly totals for 31 days, as the retention leaves
it): the CPU per recorded result, one flush after a minute of results at 1 s per
target, the uncached read of the 24 h / 7 d / 30 d windows and the 24 h bar (what the
first status-page request after a flush pays; later ones hit the cache), a cached read
(windows plus the bar as objects per slot, and as the int arrays ``/api/uptime`` sends),
the hourly prune, and how long a flush on the "event loop" waits while another thread
runs the uncached read (the reads use the store's read-only snapshot connection, so this
should be the flush's own time, not the read's).

What a status page left open costs as its windows move: the API's read (windows plus the
bar as arrays) the first time, right after a 5-minute move (the 24 h window and the bar
move) and right after an hourly move (7 d and 30 d move too), each timed with a "loop"
thread beside it that sleeps 2 ms at a time: how late its wakeups get is how long the
read holds the GIL in one go. Medians of ``--runs`` runs.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
from _common import table, write_results

from guardian.api.views import build_uptime
from guardian.store.db import Database
from guardian.uptime.store import UPTIME, UptimeStore

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


class Mono:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def fill(db: Database, targets: int) -> None:
    end = int(NOW.timestamp())
    fine = [(f"t{t}", end - 300 * i, 299, 300, 0) for t in range(targets) for i in range(300)]
    hourly = [(f"t{t}", end - end % 3600 - 3600 * i, 3599, 3600, 0)
              for t in range(targets) for i in range(31 * 24)]

    def write(c: object) -> None:
        c.executemany("INSERT INTO uptime VALUES (?,?,?,?,?)", fine)  # type: ignore[attr-defined]
        c.executemany(  # type: ignore[attr-defined]
            "INSERT INTO uptime_hourly VALUES (?,?,?,?,?)", hourly)

    db.write(write)


def timed_read(store: UptimeStore, when: datetime) -> tuple[float, float]:
    """The API's read at ``when``: its wall time, and the worst lateness of a thread
    that wakes up every 2 ms meanwhile (the event loop's checks, in Guardian)."""
    stop = threading.Event()
    late: list[float] = [0.0]

    def loop() -> None:
        while not stop.is_set():
            t0 = time.perf_counter()
            time.sleep(0.002)
            late[0] = max(late[0], time.perf_counter() - t0 - 0.002)

    ticker = threading.Thread(target=loop)
    ticker.start()
    time.sleep(0.02)
    t0 = time.perf_counter()
    store.windows(when)
    store.bar_arrays(when)
    took = time.perf_counter() - t0
    stop.set()
    ticker.join()
    return took, late[0]


def run(targets: int, tmp: Path) -> dict[str, float]:
    path = tmp / f"u{targets}.db"
    db = Database(path, components=(UPTIME,))
    mono = Mono()
    store = UptimeStore(db, now=lambda: NOW, monotonic=mono, flush_every=60)
    fill(db, targets)
    store.prune(NOW)
    names = [f"t{t}" for t in range(targets)]
    # One minute of results at 1 s per target, recorded as the event bus would.
    n = 60 * targets
    t0 = time.perf_counter()
    for s in range(60):
        when = NOW + timedelta(seconds=s)
        for name in names:
            store.record(name, when, True)
    record_us = (time.perf_counter() - t0) / n * 1e6
    t0 = time.perf_counter()
    store.flush()
    flush_s = time.perf_counter() - t0
    later = NOW + timedelta(seconds=60)
    flush_wait_s = flush_during_read(store, names, later)
    flush_locked_s = flush_during_read(store, names, later, locked=True)
    first_s, first_late_s = timed_read(store, later)
    move5_s, move5_late_s = timed_read(store, later + timedelta(minutes=5))
    store.windows(later + timedelta(minutes=55))  # the page kept polling all hour
    store.bar_arrays(later + timedelta(minutes=55))
    hour_s, hour_late_s = timed_read(store, later + timedelta(minutes=60))
    cur = later + timedelta(minutes=60)
    fresh = UptimeStore(db, now=lambda: cur, monotonic=mono)  # as after a Guardian start
    t0 = time.perf_counter()
    fresh.windows(cur)  # every window read from the file, the bar as objects per slot
    fresh.bars(cur)
    read_s = time.perf_counter() - t0
    db.register(UPTIME, store._resave)  # the store under test gets its hook back
    t0 = time.perf_counter()
    for _ in range(10):
        store.windows(cur)
        store.bars(cur)
    cached_s = (time.perf_counter() - t0) / 10
    t0 = time.perf_counter()
    for _ in range(10):
        store.windows(cur)
        store.bar_arrays(cur)
    cached_arrays_s = (time.perf_counter() - t0) / 10
    targets = SimpleNamespace(targets=[SimpleNamespace(name=n) for n in names])
    view: Any = SimpleNamespace(uptime_counts=store, config=targets)  # what build_uptime reads
    body = build_uptime(view, cur).model_dump_json()
    t0 = time.perf_counter()
    for _ in range(5):
        body = build_uptime(view, cur).model_dump_json()
    api_s, api_kb = (time.perf_counter() - t0) / 5, len(body) / 1000
    t0 = time.perf_counter()
    store.prune(NOW + timedelta(hours=1))
    prune_s = time.perf_counter() - t0
    size_mb = sum(p.stat().st_size for p in tmp.glob(path.name + '*')) / 1e6  # with -wal
    store.close()
    db.close()
    for leftover in tmp.glob(path.name + '*'):  # the file, its -wal/-shm and marker
        leftover.unlink()
    return {"record_us": record_us, "flush_s": flush_s, "read_s": read_s,
            "first_api_read_s": first_s, "first_late_s": first_late_s,
            "move_s": move5_s, "move_late_s": move5_late_s,
            "hour_move_s": hour_s, "hour_move_late_s": hour_late_s,
            "cached_read_s": cached_s, "cached_arrays_s": cached_arrays_s,
            "flush_during_read_s": flush_wait_s, "flush_during_locked_read_s": flush_locked_s,
            "prune_s": prune_s, "file_mb": size_mb, "api_s": api_s, "api_kb": api_kb}


def flush_during_read(
    store: UptimeStore, names: list[str], later: datetime, *, locked: bool = False,
) -> float:
    """A flush of one result per target, started while another thread is inside the
    uncached aggregation (a fresh store's first read, on the same Database: a window
    move no longer aggregates): its wall time, wait for any lock included.
    ``locked`` holds the writer's lock around the read, as the reads did before they
    moved to the snapshot connection (the "before" figure)."""
    inside = threading.Event()

    def mark() -> int:
        inside.set()
        return 0

    # Called every 100 000 SQLite steps only: each call takes the GIL from the flush.
    store.db.snapshot(lambda c: c.set_progress_handler(mark, 100_000))
    store.db.connection.set_progress_handler(mark, 100_000)  # memory / locked: the writer's
    fresh = UptimeStore(store.db, now=lambda: later, monotonic=store._monotonic)

    def read() -> None:
        with store.db.lock if locked else contextlib.nullcontext():
            fresh.windows(later)
            fresh.bars(later)

    reader = threading.Thread(target=read)
    reader.start()
    inside.wait(60)
    for name in names:
        store.record(name, later, True)
    t0 = time.perf_counter()
    store.flush()
    waited = time.perf_counter() - t0
    reader.join()
    store.db.register(UPTIME, store._resave)  # the hook back to the store under test
    store.db.snapshot(lambda c: c.set_progress_handler(None, 0))
    store.db.connection.set_progress_handler(None, 0)
    return waited


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--targets", type=int, nargs="*", default=[10, 100, 1000])
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    data: dict[str, object] = {"runs": args.runs, "targets": {}}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for targets in args.targets:
            runs = [run(targets, Path(tmp)) for _ in range(args.runs)]
            med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
            data["targets"][str(targets)] = {"runs": runs, "median": med}  # type: ignore[index]
            rows.append([
                f"{targets:,}", f"{med['file_mb']:.1f}", f"{med['record_us']:.2f}",
                f"{med['api_s'] * 1000:.1f}", f"{med['api_kb']:.0f}",
                f"{med['flush_s'] * 1000:.1f}", f"{med['read_s'] * 1000:.1f}",
                f"{med['first_api_read_s'] * 1000:.1f} / {med['first_late_s'] * 1000:.1f}",
                f"{med['move_s'] * 1000:.1f} / {med['move_late_s'] * 1000:.1f}",
                f"{med['hour_move_s'] * 1000:.1f} / {med['hour_move_late_s'] * 1000:.1f}",
                f"{med['cached_read_s'] * 1000:.1f}", f"{med['cached_arrays_s'] * 1000:.1f}",
                f"{med['flush_during_locked_read_s'] * 1000:.1f}",
                f"{med['flush_during_read_s'] * 1000:.1f}", f"{med['prune_s'] * 1000:.1f}",
            ])
    md = table(["targets", "file MB", "record µs/result",
                "/api/uptime body ms (cached read + JSON)", "/api/uptime kB",
                "flush ms (1 min at 1 s)",
                "read ms (fresh store: all windows, bar objects)",
                "API read ms / loop late ms: first", "after a 5-min move",
                "after an hourly move",
                "read ms (cached, bar objects)",
                "read ms (cached, bar arrays = API)",
                "flush ms during an uncached read: before (read under the writer's lock)",
                "after (read on the snapshot connection)",
                "prune ms"], rows)
    md += (f"\n\nMedians of {args.runs} runs; 30 days of history in the file (25 h of"
           " 5-minute buckets, 31 days of hourly totals). \"API read\" is windows() plus"
           " bar_arrays() as /api/uptime calls them: first (everything read from the file),"
           " right after a 5-minute move (24 h window and bar derived from the day's buckets"
           " held in memory, no query) and right after an hourly move (7 d/30 d: the previous"
           " figures less the hour that left, one row per target and window); \"loop late\""
           " is the worst wakeup lateness of a thread sleeping 2 ms at a time beside it (the"
           " GIL held in one go; 5 ms is the interpreter's switch interval). The flush"
           " columns time a flush while a fresh store's first read aggregates: \"before\""
           " holds the writer's lock around that read, as reads did before they moved to the"
           " read-only snapshot connection; \"bar objects\" is the per-slot shape"
           " /api/uptime sent before, \"bar arrays\" the one it sends now.")
    print(md)
    write_results("uptime", data, md)


if __name__ == "__main__":
    main()
