"""Fan-out: 1000 targets failing at once (one switch, one dead upstream).

The real incident stack (``start_incidents``: SQLite store file, tracker, reporter with
the real psutil snapshot, notifier through real apprise) gets the results of N targets'
1 s http checks: every target fails at once for ``--rounds`` rounds (``escalation.failures``
is 3, so every incident opens and escalates), then every target is healthy again
(``stable_period`` 0: every incident resolves). Notifications go to a webhook receiver in
a child process that counts them. Measured per run: notification messages received,
report files written, time from the first failure until every report and message is
done, Guardian's CPU (process time, the receiver excluded) and the event loop's worst
stall while it happens (a 10 ms ticker), i.e. what the burst costs the checks that
keep running meanwhile.

Timings from the first failure: ``publish_failed_s`` the failing rounds themselves (1 s
apart; longer when the tracker's synchronous work holds the loop), ``reports_done_s`` the
last report written, ``failing_phase_s`` the last message of the failures sent (with
grouping this includes waiting out the windows, by design), ``drain_s`` the same after
every target recovered (1 s after, all resolving at once).

``--spread`` delivers each round over its second, as the engine's spread phases do (the
worst loop stall then shows what checks running meanwhile would see); the default is the
worst case, every result in one go.

``--baseline-src /path/to/other/src`` also measures another checkout (e.g. main before
grouping) in a child interpreter and writes both side by side.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

RECEIVER = r"""
import sys, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
count = 0
lock = threading.Lock()
class H(BaseHTTPRequestHandler):
    def do_POST(self):
        global count
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        with lock:
            count += 1
        self.send_response(200); self.send_header("Content-Length", "0"); self.end_headers()
    def do_GET(self):
        body = str(count).encode()
        self.send_response(200); self.send_header("Content-Length", str(len(body)))
        self.end_headers(); self.wfile.write(body)
    def log_message(self, *a): pass
s = ThreadingHTTPServer(("127.0.0.1", 0), H)
print(s.server_address[1], flush=True)
s.serve_forever()
"""


def received(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as r:
        return int(r.read())


async def drain(incidents: Any) -> None:
    """Every report written and every message sent (held ones too: their window ends)."""
    await incidents.tracker.idle()
    notifier = incidents.notifier
    await (notifier.drain() if hasattr(notifier, "drain") else notifier.idle())
    await incidents.tracker.idle()


async def one_run(n: int, rounds: int, port: int, tmp: Path, spread: bool) -> dict[str, Any]:
    from guardian.config.schema import Config
    from guardian.core.clock import SystemClock
    from guardian.core.events import EventBus
    from guardian.core.result import CheckResult, Status
    from guardian.core.state import State
    from guardian.incidents import start_incidents

    config = Config.model_validate(
        {
            "guardian": {
                "log_dir": str(tmp / "logs"),
                "report_dir": str(tmp / "reports"),
                "state_dir": str(tmp / "state"),
            },
            "escalation": {"failures": 3, "stable_period": 0},
            "notify": {"urls": [f"json://127.0.0.1:{port}/hook"], "rate_limit_per_hour": 20},
            "targets": [
                {
                    "name": f"t{i:04d}",
                    "checks": [{"kind": "http", "url": f"http://10.9.{i // 250}.{i % 250}/"}],
                }
                for i in range(n)
            ],
        }
    )
    # Guardian logs every open/escalation/report/message at info: into a file, as it would.
    handler = logging.FileHandler(tmp / "guardian.log")
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    clock = SystemClock()
    bus = EventBus()
    state = State(config, bus)
    incidents = start_incidents(config, bus, clock, state, {})
    before = received(port)

    worst = 0.0
    ticking = True

    async def ticker() -> None:
        nonlocal worst
        loop = asyncio.get_running_loop()
        while ticking:
            t0 = loop.time()
            await asyncio.sleep(0.01)
            worst = max(worst, loop.time() - t0 - 0.01)

    tick = asyncio.create_task(ticker())
    await asyncio.sleep(0.05)

    async def publish(status: Status, reason: str) -> None:
        """All n results in one go (burst), or over one second (spread: the engine's phases)."""
        chunks = 100 if spread else 1
        per = -(-n // chunks)
        start = time.monotonic()
        for c in range(chunks):
            now = clock.now()
            for i in range(c * per, min(n, (c + 1) * per)):
                bus.publish(
                    CheckResult(f"t{i:04d}", "http", "http", status, reason, {}, now, now, 0.01)
                )
            if spread:
                await asyncio.sleep(max(0.0, start + (c + 1) / chunks - time.monotonic()))

    cpu0 = time.process_time()
    t0 = time.monotonic()
    for k in range(rounds):
        started = time.monotonic()
        await publish(Status.FAILED, "connect failed: connection refused (10.9.0.1:80)")
        if k < rounds - 1:
            await asyncio.sleep(max(0.0, started + 1.0 - time.monotonic()))
    publish_failed = time.monotonic() - t0
    await incidents.tracker.idle()
    reports_done = time.monotonic() - t0
    await drain(incidents)
    opened_drained = time.monotonic() - t0
    await asyncio.sleep(1.0)
    await publish(Status.OK, "HTTP 200")
    await drain(incidents)
    drained = time.monotonic() - t0
    cpu = time.process_time() - cpu0
    ticking = False
    await tick
    await asyncio.sleep(0.5)  # the receiver has answered every POST by now
    messages = received(port) - before
    reports = len(list((tmp / "reports").glob("*.md"))) if (tmp / "reports").exists() else 0
    store = incidents.store
    escalated = sum(1 for i in store.incidents(limit=n * 2) if i.escalated_at is not None)
    attempts = store.notifications()
    await incidents.aclose()
    root.removeHandler(handler)
    handler.close()
    return {
        "targets": n,
        "incidents": escalated,
        "messages": messages,
        "notification_rows": len(attempts),
        "reports": reports,
        "publish_failed_s": round(publish_failed, 3),
        "reports_done_s": round(reports_done, 3),
        "failing_phase_s": round(opened_drained, 3),
        "drain_s": round(drained, 3),
        "cpu_s": round(cpu, 3),
        "worst_loop_stall_ms": round(worst * 1000, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--targets", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=4, help="failing rounds (3 escalate)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--src", type=Path, default=None, help="import guardian from here")
    ap.add_argument("--label", default="this checkout")
    ap.add_argument("--no-write", action="store_true", help="print only")
    ap.add_argument(
        "--spread",
        action="store_true",
        help="each round's results over its second (as the engine's phases deliver them),"
        " not all in one go; results go to fanout_spread.json/.md",
    )
    ap.add_argument("--json-out", type=Path, default=None, help="write the runs here")
    ap.add_argument("--baseline-src", type=Path, default=None, help="compare with this src")
    args = ap.parse_args()
    baseline: dict[str, Any] | None = None
    if args.baseline_src is not None:
        import subprocess

        with tempfile.TemporaryDirectory() as d:
            out = Path(d) / "baseline.json"
            subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--src",
                    str(args.baseline_src),
                    "--runs",
                    str(args.runs),
                    "--targets",
                    str(args.targets),
                    "--rounds",
                    str(args.rounds),
                    "--no-write",
                    "--json-out",
                    str(out),
                    *(["--spread"] if args.spread else []),
                ],
                check=True,
                timeout=3600,
            )
            baseline = json.loads(out.read_text())
    if args.src is not None:
        sys.path.insert(0, str(args.src.resolve()))
    else:
        from _common import REPO

        sys.path.insert(0, str(REPO / "src"))
    import subprocess

    import guardian

    print(f"guardian from {Path(guardian.__file__).parent}")
    recv = subprocess.Popen(
        [sys.executable, "-c", RECEIVER], stdout=subprocess.PIPE, start_new_session=True
    )
    try:
        assert recv.stdout is not None
        port = int(recv.stdout.readline())
        runs = []
        for i in range(args.runs):
            with tempfile.TemporaryDirectory(prefix="fanout-") as d:
                r = asyncio.run(one_run(args.targets, args.rounds, port, Path(d), args.spread))
            print(f"run {i + 1}: {json.dumps(r)}")
            runs.append(r)
    finally:
        recv.kill()
        recv.wait(timeout=5)
    keys = [k for k in runs[0] if k != "targets"]
    med = {k: statistics.median(r[k] for r in runs) for k in keys}
    print(json.dumps({"median": med}, indent=2))
    if args.json_out is not None:
        args.json_out.write_text(json.dumps({"runs": runs, "median": med}))
    if args.no_write:
        return
    from _common import table, write_results

    heads = ["figure"]
    if baseline is not None:
        heads += [f"before ({args.baseline_src}) median", "before runs"]
    heads += ["median", "runs"]
    rows = []
    for k in keys:
        row: list[Any] = [k]
        if baseline is not None:
            row += [
                baseline["median"].get(k, "-"),
                " / ".join(str(r.get(k, "-")) for r in baseline["runs"]),
            ]
        row += [med[k], " / ".join(str(r[k]) for r in runs)]
        rows.append(row)
    arrival = "spread over each second" if args.spread else "all in one go"
    md = (
        f"{args.targets} targets failing at once ({arrival}) for {args.rounds} rounds 1 s apart "
        f"(escalation.failures 3), then all healthy (stable_period 0); "
        f"{len(runs)} runs, medians. One apprise json:// URL to a local receiver.\n\n"
        + table(heads, rows)
    )
    data = {"label": args.label, "runs": runs, "median": med, "baseline": baseline}
    write_results("fanout_spread" if args.spread else "fanout", data, md)


if __name__ == "__main__":
    main()
