"""CPU per HTTP probe: Guardian's http check on its wire path vs the httpx path it replaced.

One check object per client, N sequential GETs against ``testkit/fast_server.py`` (a separate
process, so its CPU is not counted); CPU time of this process per GET (``time.process_time``)
is the figure. Rows:

* ``guardian http check (wire, keep-alive)``: ``checks/http.py`` as shipped: every guarantee
  (capped body, deadline, judging) included.
* ``httpx, new connection per GET``: the previous probe (``max_keepalive_connections=0``).
* ``httpx, keep-alive``: what connection reuse alone buys on httpx.
* ``aiohttp, keep-alive`` when aiohttp is importable (ComfyUI's own stack; not a dependency).
* ``raw asyncio streams, keep-alive``: the floor (no parsing beyond a length header).

Each row is the median of ``--repeats`` runs of ``--requests`` GETs; ratios are to the
shipped check. A second table is the ``comfyui`` check (``/system_stats``, ``/queue``,
``/history``: three GETs and their judging per run), CPU per check run, for this checkout
and for ``--before-ref`` (``git archive`` of its ``src``; ``main`` spoke httpx). Its server
is a child process replaying the ComfyUI simulator's bodies from asyncio streams (the
threaded simulator itself sends headers and body in two writes, so Nagle and delayed ACKs
add ~40 ms to every request; aiohttp, real ComfyUI's server, does not). Results go to
results/probe.{json,md}.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from _common import (
    FAST_SERVER,
    export_tree,
    free_port,
    http_ok,
    machine,
    table,
    wait_for,
    write_results,
)

from guardian.checks.base import CheckContext
from guardian.checks.http.check import HttpCheckConfig, create
from guardian.core.clock import SystemClock

Get = Callable[[], Awaitable[None]]


async def guardian_check(url: str) -> tuple[Get, Callable[[], Awaitable[None]]]:
    check = create(HttpCheckConfig(url=url, timeout=5), CheckContext("bench", SystemClock()))

    async def get() -> None:
        out = await check.run()
        assert out.status.value == "ok", out.reason

    return get, check.aclose


async def httpx_client(url: str, keepalive: bool) -> tuple[Get, Callable[[], Awaitable[None]]]:
    import httpx

    limits = httpx.Limits(max_connections=2, max_keepalive_connections=2 if keepalive else 0)
    client = httpx.AsyncClient(limits=limits, trust_env=False, timeout=5)

    async def get() -> None:
        async with client.stream("GET", url) as response:
            body = b"".join([c async for c in response.aiter_bytes()])
            assert response.status_code == 200 and body

    return get, client.aclose


async def comfyui_check(url: str) -> tuple[Get, Callable[[], Awaitable[None]]]:
    from guardian.checks.comfyui.health import ComfyUICheck, ComfyUICheckConfig

    check = ComfyUICheck(ComfyUICheckConfig(url=url, timeout=5),
                         CheckContext("bench", SystemClock()))

    async def run() -> None:
        out = await check.run()
        assert out.status.value == "ok", out.reason

    return run, check.aclose


async def aiohttp_client(url: str) -> tuple[Get, Callable[[], Awaitable[None]]]:
    import aiohttp

    session = aiohttp.ClientSession()

    async def get() -> None:
        async with session.get(url) as response:
            assert response.status == 200 and await response.read()

    return get, session.close


async def raw_streams(port: int) -> tuple[Get, Callable[[], Awaitable[None]]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    request = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"

    async def get() -> None:
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        await reader.readexactly(length)

    async def close() -> None:
        writer.close()

    return get, close


async def measure(make: Callable[[], Awaitable[tuple[Get, Any]]], n: int) -> float:
    get, close = await make()
    for _ in range(50):  # warm up: imports, first connection
        await get()
    t0 = time.process_time()
    for _ in range(n):
        await get()
    cpu = time.process_time() - t0
    await close()
    return cpu / n * 1e6  # µs per GET


def run_in_subprocess(row: str, port: int, n: int, src: Path | None = None) -> float:
    """Each row in a fresh interpreter, so no client's imports or pools help another;
    ``src``: the guardian tree it imports (default: this checkout's)."""
    here = str(Path(__file__).parent)
    tree = f"sys.path.insert(0, {str(src)!r});" if src is not None else ""
    code = (
        f"import asyncio, sys; sys.path.insert(0, {here!r}); import _common; {tree}"
        "import bench_probe as b;"
        f"print(asyncio.run(b.one({row!r}, {port}, {n})))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300
    )
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    return float(out.stdout.strip().splitlines()[-1])


async def one(row: str, port: int, n: int) -> float:
    url = f"http://127.0.0.1:{port}/"
    makers: dict[str, Callable[[], Awaitable[tuple[Get, Any]]]] = {
        "guardian": lambda: guardian_check(url),
        "httpx-new": lambda: httpx_client(url, False),
        "httpx-keep": lambda: httpx_client(url, True),
        "aiohttp": lambda: aiohttp_client(url),
        "raw": lambda: raw_streams(port),
        "comfyui": lambda: comfyui_check(f"http://127.0.0.1:{port}"),
    }
    return await measure(makers[row], n)


ROWS = [
    ("guardian", "guardian http check (wire, keep-alive)"),
    ("httpx-new", "httpx, new connection per GET (previous probe)"),
    ("httpx-keep", "httpx, keep-alive"),
    ("aiohttp", "aiohttp, keep-alive"),
    ("raw", "raw asyncio streams, keep-alive (floor)"),
]


COMFYUI_PATHS = ("/system_stats", "/queue", "/history?max_items=1")


def serve_comfyui(port: int) -> None:
    """Answer the comfyui check's three GETs with what the simulator answers, cheaply."""
    from urllib.request import ProxyHandler, build_opener

    from guardian.demo.comfyui.server import ComfyUISim

    sim = ComfyUISim(device="cuda").start()
    try:
        opener = build_opener(ProxyHandler({}))
        bodies = {p.encode(): opener.open(sim.url + p, timeout=5).read() for p in COMFYUI_PATHS}
    finally:
        sim.stop()
    bodies[b"/"] = b"{}"
    replies = {
        target: b"HTTP/1.1 200 OK\r\nContent-Type: application/json; charset=utf-8\r\n"
        + b"Content-Length: %d\r\n\r\n" % len(body) + body
        for target, body in bodies.items()
    }
    missing = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                writer.write(replies.get(head.split(b" ", 2)[1], missing))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    async def serve() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", port)
        async with server:
            await server.serve_forever()

    asyncio.run(serve())


def comfyui_rows(before_ref: str, runs: int, repeats: int) -> tuple[dict[str, Any], str]:
    """µs CPU per ``comfyui`` check run, this checkout and ``before_ref``."""
    port = free_port()
    here = str(Path(__file__).parent)
    sim = subprocess.Popen(
        [sys.executable, "-c", f"import sys; sys.path.insert(0, {here!r}); import bench_probe "
         f"as b; b.serve_comfyui({port})"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    samples: dict[str, list[float]] = {}
    try:
        if wait_for(lambda: http_ok(port), 10) is None:
            raise SystemExit("the ComfyUI replay server did not start")
        with tempfile.TemporaryDirectory(prefix="probe-tree-") as d:
            trees: list[tuple[str, Path | None]] = [("after (this checkout)", None)]
            if before_ref:
                trees.insert(0, (f"before (`{before_ref}`)", export_tree(before_ref, Path(d))))
            for _ in range(repeats):
                for label, src in trees:
                    samples.setdefault(label, []).append(
                        run_in_subprocess("comfyui", port, runs, src)
                    )
    finally:
        sim.terminate()
        sim.wait(5)
    base = statistics.median(samples["after (this checkout)"])
    rows = []
    for label, values in samples.items():
        med = statistics.median(values)
        rows.append([f"comfyui check, {label}", f"{med:.0f}",
                     f"{min(values):.0f}-{max(values):.0f}", f"{med / base:.2f}"])
    md = (f"\n\n`comfyui` check against the simulator's answers: CPU per check run in µs "
          f"(three GETs and judging), median of {repeats} runs x {runs} check runs.\n\n"
          + table(["check", "µs CPU / run", "range", "x after"], rows))
    return samples, md


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--comfyui-runs", type=int, default=300,
                    help="comfyui check runs per sample (0 skips that table)")
    ap.add_argument("--before-ref", default="main",
                    help="git ref whose comfyui check is measured as 'before' ('' to skip)")
    args = ap.parse_args()
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, str(FAST_SERVER), "--port", str(port)]
    )
    try:
        if wait_for(lambda: http_ok(port), 10) is None:
            raise SystemExit("fast_server did not start")
        has_sniffio = importlib.util.find_spec("sniffio") is not None
        has_aiohttp = importlib.util.find_spec("aiohttp") is not None
        samples: dict[str, list[float]] = {}
        for _ in range(args.repeats):
            for key, _label in ROWS:
                if key == "aiohttp" and not has_aiohttp:
                    continue
                samples.setdefault(key, []).append(
                    run_in_subprocess(key, port, args.requests)
                )
    finally:
        server.terminate()
        server.wait(5)
    base = statistics.median(samples["guardian"])
    rows = []
    for key, label in ROWS:
        if key not in samples:
            rows.append([label, "skipped (not installed)", "", ""])
            continue
        med = statistics.median(samples[key])
        spread = f"{min(samples[key]):.0f}-{max(samples[key]):.0f}"
        rows.append([label, f"{med:.0f}", spread, f"{med / base:.2f}"])
    md = (
        f"CPU per GET in µs, median of {args.repeats} runs x {args.requests} GETs "
        f"(sniffio installed: {has_sniffio}).\n\n"
        + table(["client", "µs CPU / GET", "range", "x guardian"], rows)
    )
    comfyui: dict[str, list[float]] = {}
    if args.comfyui_runs:
        comfyui, comfyui_md = comfyui_rows(args.before_ref, args.comfyui_runs, args.repeats)
        md += comfyui_md
    print(md)
    write_results(
        "probe",
        {"machine": machine(), "requests": args.requests, "samples_us": samples,
         "sniffio_installed": has_sniffio, "comfyui_runs": args.comfyui_runs,
         "comfyui_samples_us_per_run": comfyui},
        md,
    )  # fmt: skip


if __name__ == "__main__":
    main()
