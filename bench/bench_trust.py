"""Issue 21 figures, before and after.

1. A target that streams response headers forever: one probe of a server that sends
   ``HTTP/1.1 200`` and then header lines as fast as it can, with a 10 s deadline, in a
   fresh process per client (so RSS is that client's): the client of ``main``
   (``--before FILE``: its wire.py) against this checkout's.
2. Another process holds the store's SQLite write lock for ``--hold`` seconds (30): the
   daemon's store (as ``runtime.py`` opens it: recover, 0.25 s busy timeout, and this
   checkout's writer thread) gets what a busy Guardian gives it from its event loop, a
   check result every 10 ms and a breaker save every 100 ms; a ticker measures the loop's
   worst stall. Then, lock free, events/s into the store (``add_result`` until every
   write is in the file). ``--before-src DIR``: the ``src`` of the version to compare.

Prints and writes ``bench/results/trust.json`` / ``trust.md``.

    .venv/bin/python bench/bench_trust.py --before /tmp/wire_main.py --before-src /tmp/main/src
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"

PROBE = r"""
import asyncio, importlib.util, json, sys, time, resource
sys.path.insert(0, sys.argv[2])
if sys.argv[1] == "new":
    from guardian.checks.http.wire import WireClient
else:
    spec = importlib.util.spec_from_file_location("wire_old", sys.argv[1])
    mod = importlib.util.module_from_spec(spec); sys.modules["wire_old"] = mod
    spec.loader.exec_module(mod)
    WireClient = mod.WireClient

async def flood(reader, writer):
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"HTTP/1.1 200 OK\r\n")
    line = b"X-Junk: " + b"j" * 100 + b"\r\n"
    try:
        while True:
            writer.write(line * 512)
            await writer.drain()
    except (ConnectionError, OSError):
        pass

async def main():
    srv = await asyncio.start_server(flood, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    wire = WireClient()
    lags = []
    async def tick():
        while True:
            t = time.perf_counter(); await asyncio.sleep(0.01)
            lags.append(time.perf_counter() - t - 0.01)
    ticker = asyncio.ensure_future(tick())
    t0 = time.perf_counter()
    try:
        async with asyncio.timeout(10):
            await wire.request("GET", "127.0.0.1", port, "/", limit=1 << 20, connect_timeout=2)
        outcome = "answered"
    except TimeoutError:
        outcome = "timed out after 10 s"
    except Exception as e:
        outcome = str(e)
    took = time.perf_counter() - t0
    ticker.cancel()
    await wire.aclose()
    srv.close()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"outcome": outcome, "seconds": round(took, 3),
                      "max_rss_mib": round(rss, 1),
                      "max_loop_stall_ms": round(max(lags or [0]) * 1000, 1)}))

asyncio.run(main())
"""


LOCK_PROBE = r"""
import asyncio, inspect, json, subprocess, sys, tempfile, time
from datetime import UTC, datetime
from pathlib import Path
sys.path.insert(0, sys.argv[1])
hold = float(sys.argv[2])
from guardian.core.result import CheckResult, Status
from guardian.incidents.migrations import INCIDENTS
from guardian.incidents.store import Store
from guardian.recovery.breakers import BREAKERS, BreakerRecord, SqliteBreakerStore
from guardian.store.db import Database

HOLDER = ("import sqlite3, sys, time\n"
          "c = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
          "c.execute('BEGIN IMMEDIATE')\n"
          "print('held', flush=True)\n"
          "time.sleep(float(sys.argv[2]))\n")

def open_db(path):
    kw = dict(recover=True, timeout=0.25, components=(INCIDENTS, BREAKERS))
    if "writer" in inspect.signature(Database).parameters:
        kw["writer"] = True  # as runtime.py opens it
    return Database(path, **kw)

def result(i):
    now = datetime.now(UTC)
    return CheckResult(target="comfyui", check="http", kind="http", status=Status.OK,
                       reason=f"ok {i}", values={}, started=now, finished=now, duration=0.01)

async def locked(path):
    db = open_db(path)
    store, breakers = Store(db, prune_every=0), SqliteBreakerStore(db)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(path), str(hold)],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline() == "held\n"
    stalls, t_end, i, kept = [], time.monotonic() + hold, 0, False
    while time.monotonic() < t_end:
        if not kept and time.monotonic() > t_end - hold / 2:  # mid-hold: lock surely held
            kept = bool(breakers.unsaved)
        t = time.perf_counter()
        store.add_result(result(i))
        if i % 10 == 0:
            breakers.save("comfyui", BreakerRecord(attempts=i))
        i += 1
        await asyncio.sleep(0.01)
        stalls.append(time.perf_counter() - t - 0.01)
    holder.wait()
    db.close()
    return {"events": i, "max_loop_stall_ms": round(max(stalls) * 1000, 1),
            "loop_stalled_s": round(sum(s for s in stalls if s > 0.005), 2),
            "breaker_kept": kept}

def rate(path, n=20000):
    db = open_db(path)
    store = Store(db, prune_every=0)
    t = time.perf_counter()
    for i in range(n):
        store.add_result(result(i))
    if hasattr(db, "drain"):
        db.drain(60)
    took = time.perf_counter() - t
    db.close()
    return round(n / took)

tmp = Path(tempfile.mkdtemp())
out = asyncio.run(locked(tmp / "locked.db"))
out["events_per_s"] = rate(tmp / "rate.db")
print(json.dumps(out))
"""


def run_lock(src: Path, hold: float) -> dict[str, object]:
    out = subprocess.run([sys.executable, "-c", LOCK_PROBE, str(src), str(hold)],
                         capture_output=True, text=True, timeout=hold + 300, check=True)
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def run(which: str) -> dict[str, object]:
    out = subprocess.run([sys.executable, "-c", PROBE, which, str(HERE.parent / "src")],
                         capture_output=True, text=True, timeout=60, check=True)
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--before", help="wire.py of the version to compare with")
    ap.add_argument("--before-src", type=Path, help="src dir of the version to compare with")
    ap.add_argument("--hold", type=float, default=30.0, help="s the SQLite lock is held")
    ap.add_argument("--only", choices=["headers", "lock"], help="run one case only")
    args = ap.parse_args()
    RESULTS.mkdir(exist_ok=True)
    saved = RESULTS / "trust.json"
    doc = json.loads(saved.read_text()) if saved.exists() else {}
    if "after" in doc:  # the first layout held the header case only
        doc = {"headers": doc}
    if args.only != "lock":
        rows = {"after": run("new")}
        if args.before:
            rows = {"before": run(args.before), **rows}
        doc["headers"] = rows
    if args.only != "headers":
        lock = {"after": run_lock(HERE.parent / "src", args.hold)}
        if args.before_src:
            lock = {"before": run_lock(args.before_src, args.hold), **lock}
        doc["sqlite_lock"] = {"hold_s": args.hold, **lock}
    saved.write_text(json.dumps(doc, indent=2) + "\n")
    lines = ["| endless response headers | outcome | time | max RSS | max loop stall |",
             "| --- | --- | --- | --- | --- |"]
    for name, r in doc.get("headers", {}).items():
        lines.append(f"| {name} | {r['outcome']} | {r['seconds']} s | {r['max_rss_mib']} MiB"
                     f" | {r['max_loop_stall_ms']} ms |")
    lock_doc = doc.get("sqlite_lock")
    if lock_doc:
        lines += ["", f"| SQLite write lock held {lock_doc['hold_s']:g} s by another process"
                  " | events from the loop | max loop stall | loop stalled in all"
                  " | breaker kept in memory | events/s into the store (lock free) |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for name, r in lock_doc.items():
            if name == "hold_s":
                continue
            lines.append(f"| {name} | {r['events']} | {r['max_loop_stall_ms']} ms"
                         f" | {r['loop_stalled_s']} s | {r['breaker_kept']}"
                         f" | {r['events_per_s']} |")
        lines += ["", "A check result every 10 ms and a breaker save every 100 ms from the"
                  " event loop while the lock is held; before: `--before-src` (writes on the"
                  " loop, 0.25 s busy timeout), after: this checkout (the store's writer"
                  " thread)."]
    text = "\n".join(lines) + "\n"
    (RESULTS / "trust.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
