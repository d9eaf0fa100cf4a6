"""Issue 21 figures: a target that streams response headers forever, before and after.

One probe of a server that sends ``HTTP/1.1 200`` and then header lines as fast as it
can, with a 10 s deadline, in a fresh process per client (so RSS is that client's):
the client of ``main`` (``--before FILE``: its wire.py) against this checkout's.
Prints and writes ``bench/results/trust.json`` / ``trust.md``.

    .venv/bin/python bench/bench_trust.py --before /tmp/wire_main.py
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


def run(which: str) -> dict[str, object]:
    out = subprocess.run([sys.executable, "-c", PROBE, which, str(HERE.parent / "src")],
                         capture_output=True, text=True, timeout=60, check=True)
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--before", help="wire.py of the version to compare with")
    args = ap.parse_args()
    rows = {"after": run("new")}
    if args.before:
        rows = {"before": run(args.before), **rows}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "trust.json").write_text(json.dumps(rows, indent=2) + "\n")
    lines = ["| endless response headers | outcome | time | max RSS | max loop stall |",
             "| --- | --- | --- | --- | --- |"]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['outcome']} | {r['seconds']} s | {r['max_rss_mib']} MiB"
                     f" | {r['max_loop_stall_ms']} ms |")
    text = "\n".join(lines) + "\n"
    (RESULTS / "trust.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
