"""Guardian's own load never becomes a target's failure: figures under API attacks.

A real ``guardian run`` supervises tests/testkit/victim.py (http check every 1 s, timeout 0.5 s).
Against its API, over real 127.0.0.1 sockets:

1. **fd exhaustion**: Guardian under ``RLIMIT_NOFILE`` 256; more idle connections than
   that are opened and held; the victim's checks must keep succeeding, no restart, and
   stderr must not fill with ``accept()`` tracebacks.
2. **GET flood**: hundreds of keep-alive clients on ``/api/health`` and ``/metrics``;
   zero failed checks, zero restarts; check start lateness p99 and max check duration.
3. **huge headers**: one 64 MiB header, then 8 parallel 32 MiB ones; status and RSS
   before/after.
4. **half-sent request**: how long until the server closes it.

Quick (about 40 s in all), prints a table, writes ``bench/results/api_flood.json`` + ``.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import machine  # noqa: E402

from testkit.attacks import (  # noqa: E402
    durations_ms,
    flood,
    guardian,
    half_sent,
    hold_idle,
    huge_header,
    lateness_p99,
    parallel_headers,
    still_open,
)

RESULTS = HERE / "results"



def fd_exhaustion(tmp: Path, nofile: int, idle: int, hold_s: float) -> dict[str, Any]:
    with guardian(tmp, nofile=nofile) as g:
        pid0, n0 = g.victim_pid(), len(g.check_results())
        fds0 = g.open_fds()
        held = hold_idle(g.api_port, idle)
        fds, end = g.open_fds(), time.monotonic() + hold_s
        while time.monotonic() < end:
            fds = max(fds, g.open_fds())
            time.sleep(0.1)
        silent, answered, closed = still_open(held)
        results = g.check_results()[n0:]
        for s in held:
            s.close()
        stderr = g.stderr()
        return {
            "rlimit_nofile": nofile,
            "idle_connections_opened": len(held),
            "guardian_open_fds_before": fds0,
            "guardian_open_fds_peak": fds,
            "after_hold_silent_open": silent,
            "after_hold_answered_503_or_closed": answered + closed,
            "checks": len(results),
            "checks_failed": sum(r["status"] != "ok" for r in results),
            "restarts": len(g.restarts()),
            "victim_pid_unchanged": g.victim_pid() == pid0,
            "stderr_tracebacks": stderr.count("Traceback"),
            "stderr_accept_errors": stderr.count("out of system resource"),
        }


def get_flood(
    tmp: Path, connections: int, seconds: float, src: Path | None = None
) -> dict[str, Any]:
    # Limits raised so every flood connection is really served (the worst case for the
    # checks); an older checkout without these keys runs with its own defaults.
    api = f"max_connections = {connections + 50}\nmax_concurrency = {connections + 50}"
    with guardian(tmp, api="" if src else api, src=src) as g:
        pid0, n0 = g.victim_pid(), len(g.check_results())
        stats = flood(g.api_port, connections, seconds, ["/api/health", "/metrics"])
        time.sleep(1.5)  # the last check of the window reports
        results = g.check_results()[n0:]
        durations = durations_ms(results)
        return {
            "connections": connections,
            "seconds": seconds,
            "connections_served": stats.connections,
            "requests": stats.requests,
            "requests_per_s": round(stats.requests / seconds),
            "refused": stats.refused,
            "checks": len(results),
            "checks_failed": sum(r["status"] != "ok" for r in results),
            "check_duration_max_ms": max(durations) if durations else None,
            "check_lateness_p99_ms": _ms(lateness_p99(g.api_port)) if not src else None,
            "restarts": len(g.restarts()),
            "victim_pid_unchanged": g.victim_pid() == pid0,
        }


def headers_and_half_sent(tmp: Path) -> dict[str, Any]:
    with guardian(tmp) as g:
        rss0 = g.rss_mib()
        single, single_s = huge_header(g.api_port, 64 << 20)
        rss1 = g.rss_mib()
        parallel = parallel_headers(g.api_port, 8, 32 << 20)
        time.sleep(0.5)
        rss2 = g.rss_mib()
        what, after = half_sent(g.api_port)
        return {
            "header_64mib": single,
            "header_64mib_s": round(single_s, 3),
            "headers_8x32mib": sorted(set(parallel)),
            "rss_before_mib": round(rss0, 1),
            "rss_after_64mib_mib": round(rss1, 1),
            "rss_after_8x32mib_mib": round(rss2, 1),
            "half_sent": what,
            "half_sent_closed_after_s": round(after, 2),
        }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--connections", type=int, default=300)
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--idle", type=int, default=400)
    ap.add_argument("--nofile", type=int, default=256)
    ap.add_argument(
        "--baseline-src", type=Path, help="also flood the Guardian of another checkout's src/"
    )
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-api-flood-") as d:
        tmp = Path(d)
        out = {
            "machine": machine(),
            "fd_exhaustion": fd_exhaustion(tmp / "fd", args.nofile, args.idle, 7.0),
            "get_flood": get_flood(tmp / "flood", args.connections, args.seconds),
            "headers": headers_and_half_sent(tmp / "headers"),
        }
        if args.baseline_src:
            out["get_flood_baseline"] = get_flood(
                tmp / "base", args.connections, args.seconds, args.baseline_src.resolve()
            )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "api_flood.json").write_text(json.dumps(out, indent=2) + "\n")
    lines = ["# API attacks vs. a supervised target", ""]
    for section in [k for k in out if k != "machine"]:
        lines += [f"## {section}", "", "| figure | value |", "| --- | --- |"]
        lines += [f"| {k} | {v} |" for k, v in out[section].items()]
        lines.append("")
    text = "\n".join(lines)
    (RESULTS / "api_flood.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
