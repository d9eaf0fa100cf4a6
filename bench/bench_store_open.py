"""What opening Guardian's store costs: PRAGMA quick_check and migrations at start.

Guardian runs ``quick_check`` every time it opens its SQLite file (guardian.db), so a
damaged file is found and moved aside before supervising starts rather than crashing a
write later. This measures that open for stores of 10k / 100k / 300k result rows (the
default ``max_events`` keeps at most 100k per table) written through the real Store,
and the cost of one moved-aside recovery (zeroed pages 2-4) for comparison.
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
from _common import table, write_results

from guardian.incidents.store import INCIDENTS, Store
from guardian.recovery.breakers import BREAKERS, SqliteBreakerStore
from guardian.store.db import Database

WHEN = datetime(2026, 12, 1, tzinfo=UTC)


def fill(path: Path, rows: int) -> None:
    db = Database(path)
    store = Store(db, prune_every=0, max_events=10**9)
    SqliteBreakerStore(db)
    vals = '{"latency_ms": 12.5, "status": 200}'

    def write(c: sqlite3.Connection) -> None:
        c.executemany(
            "INSERT INTO results (incident_id, target, check_name, kind, status, reason, vals,"
            " started, finished, duration) VALUES (NULL,'comfyui','health','http','ok',"
            " 'HTTP 200 in 12 ms',?,?,?,0.012)",
            [
                (vals, f"2026-12-01T00:00:{i:010d}", f"2026-12-01T00:00:{i:010d}")
                for i in range(rows)
            ],
        )

    db.write(write)
    store.close()
    db.close()


def open_once(path: Path) -> float:
    t0 = time.perf_counter()
    db = Database(path, recover=True, components=(INCIDENTS, BREAKERS))
    Store(db)
    SqliteBreakerStore(db)
    took = time.perf_counter() - t0
    db.close()
    return took


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sizes", type=int, nargs="*", default=[10_000, 100_000, 300_000])
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    rows_out = []
    data: dict[str, object] = {"runs": args.runs, "sizes": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.sizes:
            path = Path(tmp) / f"g{n}.db"
            fill(path, n)
            size_mb = path.stat().st_size / 1e6
            times = [open_once(path) for _ in range(args.runs)]
            page = 4096
            with open(path, "r+b") as f:
                f.seek(page)
                f.write(b"\0" * page * 3)
            t0 = time.perf_counter()
            db = Database(path, recover=True, components=(INCIDENTS, BREAKERS))
            Store(db)
            recover_s = time.perf_counter() - t0
            moved = bool(db.moved_to)
            db.close()
            med = statistics.median(times)
            data["sizes"][str(n)] = {  # type: ignore[index]
                "file_mb": size_mb,
                "open_s": times,
                "recover_s": recover_s,
                "moved": moved,
            }
            rows_out.append(
                [
                    f"{n:,}",
                    f"{size_mb:.1f}",
                    f"{med * 1000:.1f}",
                    f"{max(times) * 1000:.1f}",
                    f"{recover_s * 1000:.1f}",
                ]
            )
    md = table(
        ["result rows", "file MB", "open p50 ms", "open max ms", "damaged -> fresh ms"], rows_out
    )
    print(md)
    write_results("store_open", data, md)


if __name__ == "__main__":
    main()
