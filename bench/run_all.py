"""Run every benchmark in turn (``make bench``); each prints its table and writes results.

Not part of the test run. Takes roughly 10-12 minutes on 2 cores (Monit at its default
30 s poll and the scale bench's 3 x 300/1000-target runs dominate). Extra arguments are not
forwarded; run a single bench directly for custom settings (``python bench/bench_peers.py --help``).
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHES = [
    "bench_peers.py", "bench_hang.py", "bench_scale.py", "bench_api_flood.py",
    "bench_lifecycle.py", "bench_footprint.py", "bench_uptime.py", "bench_metrics.py",
    "bench_queue.py",
    "bench_idle.py", "bench_fanout.py",
]


def main() -> int:
    failed = []
    for name in BENCHES:
        print(f"\n=== {name} ===", flush=True)
        t0 = time.monotonic()
        rc = subprocess.call([sys.executable, str(HERE / name)], timeout=900)
        print(f"=== {name}: exit {rc} in {time.monotonic() - t0:.0f} s ===", flush=True)
        if rc:
            failed.append(name)
    if failed:
        print(f"\nfailed: {', '.join(failed)}")
    print(f"\nresults in {HERE / 'results'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
