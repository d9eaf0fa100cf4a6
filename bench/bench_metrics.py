"""``/metrics`` with 1000 targets: exposition size and render time, direct and over HTTP.

Each run is a fresh worker process (``--worker``) that builds the state a Guardian of
1000 http targets at 1 s would have after a while, with no network involved:

* 1000 http targets (every 10th with a supervised service, so restart counters and breaker
  gauges exist), a disk target (2 paths), memory + gpu (2 GPUs) and a ComfyUI target;
* 60 rounds of results recorded through :class:`~guardian.core.state.State` (so the bus feeds
  the duration histograms and failure counters), 3 % of them failing with assorted reasons;
* 1000 start-lateness samples per check (the engine keeps that many), a lag histogram,
  a recovery snapshot for every service and a few open incidents.

Then, ``--renders`` (30) times: record one more round of results for every check (as the
checks' loop does between two scrapes, so a cache keyed on state cannot help) and time
``Metrics.render()``; then the same through the real API server (``GET /metrics`` on a raw
socket, full body read). ``promtool check metrics`` (when installed) vets the last body.

``--src DIR`` measures another checkout (e.g. a worktree of main) and ``--label`` names the
figures, so ``--src ../main/src --label before`` then ``--label after`` puts both in one
results file (labels already there are kept). Medians over ``--runs`` (3) runs.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import time
from collections import deque
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import PYTHON, REPO, RESULTS, pct, table, write_results

REASONS = (
    "connection refused",
    "read timed out after 1s",
    "timeout",
    "HTTP 502",
    "invalid JSON body: Expecting value",
    "body does not contain 'ok'",
)


def config_text(n: int) -> str:
    parts = []
    for i in range(n):
        parts.append(f'[[targets]]\nname = "t{i:04d}"\n')
        if i % 10 == 0:
            parts.append(
                f'[targets.service]\nbackend = "process"\ncommand = ["/bin/true", "{i}"]\n'
            )
        parts.append(
            f'[[targets.checks]]\nkind = "http"\nurl = "http://127.0.0.1:9/h?t={i}"\n'
            "interval = 1\ntimeout = 0.9\n"
        )
    parts.append('[[targets]]\nname = "disk"\n[[targets.checks]]\nkind = "disk"\n'
                 'paths = ["/", "/data"]\n')
    parts.append('[[targets]]\nname = "system"\ncritical = false\n'
                 '[[targets.checks]]\nkind = "memory"\n[[targets.checks]]\nkind = "gpu"\n')
    parts.append('[[targets]]\nname = "comfyui"\n[[targets.checks]]\nkind = "comfyui"\n')
    return "\n".join(parts)


# --------------------------------------------------------------------------- worker


def worker(src: Path, targets: int, renders: int, seed: int) -> dict[str, Any]:
    sys.path.insert(0, str(src))  # the checkout under test, ahead of this one's
    from guardian.api.app import create_app
    from guardian.api.context import StaticView
    from guardian.api.metrics import Metrics
    from guardian.api.server import serve
    from guardian.config.load import parse_config
    from guardian.core.result import CheckResult, Status
    from guardian.core.state import State
    from guardian.engine.overload import LoopLagMonitor

    rng = random.Random(seed)
    cfg = parse_config(config_text(targets))
    state = State(cfg)
    monitor = LoopLagMonitor(state)
    for k in range(5000):
        monitor.observe(rng.expovariate(1000), float(k))
    checks = [(t.name, c.check_name, c.kind) for t in cfg.targets for c in t.checks]
    try:  # the engine's lateness windows, as the runtime hands them to the monitor
        from guardian.engine.lateness import LatenessWindow
    except ImportError:  # code from before them: samples, sorted at scrape time
        LatenessWindow = None
    lateness: dict[tuple[str, str], Any] = {}
    for t, c, _ in checks:
        samples = (rng.expovariate(200) for _ in range(1000))
        if LatenessWindow is None:
            lateness[(t, c)] = deque(samples, maxlen=1000)
        else:
            window = lateness[(t, c)] = LatenessWindow()
            for x in samples:
                window.append(x)
    if LatenessWindow is None:
        monitor.watch_lateness(lambda: [(t, c, xs) for (t, c), xs in lateness.items()])
    else:
        monitor.watch_lateness(lambda: [(t, c, w.p99()) for (t, c), w in lateness.items()])
    now = datetime.now(UTC)
    recovery = {
        t.name: {"attempts": rng.randint(0, 2), "last_restart": None,
                 "breaker_open": False, "consecutive_failures": 0}
        for t in cfg.targets if t.service is not None
    }
    incidents = [
        {"id": i, "target": f"t{i:04d}", "status": "open", "severity": "critical",
         "summary": "down", "opened_at": now.isoformat(), "escalated_at": None,
         "resolved_at": None, "failure_count": 3, "flap_count": 0, "report_path": None}
        for i in range(1, 6)
    ]
    view = StaticView(config=cfg, state=state, recovery=recovery, incident_list=incidents,
                      overload=monitor)
    values_by_kind: dict[str, dict[str, Any]] = {
        "http": {"status_code": 200, "elapsed_ms": 1.2},
        "disk": {"free_gb./": 120.5, "total_gb./": 500.0, "free_gb./data": 900.0,
                 "total_gb./data": 2000.0},
        "memory": {"available_mb": 8192.0, "total_mb": 32768.0},
        "gpu": {"util_percent.0": 37.0, "mem_used_mb.0": 4563.5, "mem_total_mb.0": 24576.0,
                "temp_c.0": 61.0, "util_percent.1": 3.0, "mem_used_mb.1": 100.0,
                "mem_total_mb.1": 24576.0, "temp_c.1": 40.0},
        "comfyui": {"online": True, "queue_running": 1, "queue_pending": 2, "busy": True,
                    "running_for_s": 12.0, "vram_free_mb.0": 20000.0,
                    "vram_total_mb.0": 24576.0},
    }

    def one_round(at: datetime) -> None:
        for target, check, kind in checks:
            failed = rng.random() < 0.03
            state.record(CheckResult(
                target=target, check=check, kind=kind,
                status=Status.FAILED if failed else Status.OK,
                reason=rng.choice(REASONS) if failed else "",
                values={} if failed else values_by_kind.get(kind, {}),
                started=at, finished=at + timedelta(milliseconds=2),
                duration=rng.expovariate(500) if not failed else 0.9,
            ))

    try:  # every render from fresh state: no reuse within min_age (1 s in production)
        metrics = Metrics(view, min_age=0)
    except TypeError:  # code without min_age re-renders on any event anyway
        metrics = Metrics(view)
    for i in range(60):
        one_round(now + timedelta(seconds=i))
    t0 = time.perf_counter()
    metrics.render()  # the first: every check's lateness p99 computed at once
    first_s = time.perf_counter() - t0
    render_s: list[float] = []
    gc_s: list[float] = []  # of each render: time spent in garbage collections inside it
    size = 0
    body = b""
    gc_start = [0.0, 0.0]  # [start of the running collection, total inside this render]

    def gc_timer(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            gc_start[0] = time.perf_counter()
        else:
            gc_start[1] += time.perf_counter() - gc_start[0]

    gc.callbacks.append(gc_timer)
    for i in range(renders):
        one_round(now + timedelta(seconds=60 + i))
        gc_start[1] = 0.0
        t0 = time.perf_counter()
        body, _ = metrics.render()
        render_s.append(time.perf_counter() - t0)
        gc_s.append(gc_start[1])
        size = len(body)
    gc.callbacks.remove(gc_timer)
    http_s = asyncio.run(_http(create_app(view, metrics=metrics), serve, renders,
                               lambda i: one_round(now + timedelta(seconds=200 + i))))
    promtool = _promtool(body)
    return {
        "targets": targets,
        "checks": len(checks),
        "bytes": size,
        "lines": body.count(b"\n"),
        "samples": sum(1 for line in body.split(b"\n") if line and not line.startswith(b"#")),
        "first_render_s": first_s,
        "render_s": render_s,
        "render_gc_s": gc_s,
        "http_s": http_s,
        "promtool": promtool,
    }


async def _http(app: Any, serve: Any, n: int, between: Any) -> list[float]:
    server = await serve(app, "127.0.0.1", 0)
    try:
        out = []
        for i in range(n):
            between(i)
            out.append(await asyncio.to_thread(_get, server.port))
        return out
    finally:
        await server.stop()


def _get(port: int) -> float:
    t0 = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(1 << 20):
            data += chunk
    if not data.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"GET /metrics: {data[:200]!r}")
    return time.perf_counter() - t0


def _promtool(body: bytes) -> str:
    tool = shutil.which("promtool")
    if tool is None:
        return "not installed"
    out = subprocess.run([tool, "check", "metrics"], input=body, capture_output=True,
                         timeout=60)
    text = (out.stdout + out.stderr).decode(errors="replace").strip()
    if out.returncode == 0 and not text:
        return "ok"
    lines = text.splitlines()
    return f"rc {out.returncode}: {len(lines)} lines, first: {lines[0] if lines else ''}"


# --------------------------------------------------------------------------- driver


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    def med(key: str, q: float) -> float:
        return statistics.median(pct(r[key], q) for r in runs)

    return {
        "runs": runs,
        "bytes": statistics.median(r["bytes"] for r in runs),
        "samples": statistics.median(r["samples"] for r in runs),
        "first_render_ms": statistics.median(r["first_render_s"] for r in runs) * 1000,
        "render_ms_p50": med("render_s", 50) * 1000,
        "render_ms_p99": med("render_s", 99) * 1000,
        "render_ms_p99_without_gc": statistics.median(
            pct([t - g for t, g in zip(r["render_s"], r["render_gc_s"], strict=True)], 99)
            for r in runs
        ) * 1000 if all("render_gc_s" in r for r in runs) else None,
        "http_ms_p50": med("http_s", 50) * 1000,
        "http_ms_p99": med("http_s", 99) * 1000,
        "promtool": sorted({r["promtool"] for r in runs}),
        "loadavg_1m": os.getloadavg()[0],  # a shared box: how busy it was
    }


def render(labels: dict[str, dict[str, Any]], n_runs: int, renders: int) -> str:
    rows = [
        [label, f"{s['bytes'] / 1e6:.2f} MB", f"{s['samples']:.0f}",
         f"{s['first_render_ms']:.0f}", f"{s['render_ms_p50']:.1f} / {s['render_ms_p99']:.1f}",
         "—" if s.get("render_ms_p99_without_gc") is None
         else f"{s['render_ms_p99_without_gc']:.1f}",
         f"{s['http_ms_p50']:.1f} / {s['http_ms_p99']:.1f}", ", ".join(s["promtool"]),
         f"{s.get('loadavg_1m', float('nan')):.1f}"]
        for label, s in labels.items()
    ]
    md = table(["code", "size", "samples", "first render ms", "render ms p50 / p99",
                "render p99 ms less GC pauses",
                "GET /metrics ms p50 / p99", "promtool check metrics", "load avg 1 min"], rows)
    return md + (
        f"\n\n1000 http targets (every 10th with a service) + disk, memory, gpu, ComfyUI; "
        f"60 rounds of results first, then one more round for every check before each of "
        f"{renders} renders (so nothing is served from a cache of unchanged state; "
        "`min_age=0` where the code has it). The first render after the 60 rounds is "
        "reported apart: it computes every check's lateness p99 at once. "
        f"Percentiles within a run, medians over {n_runs} runs (fresh processes). "
        "GET is the real API server on 127.0.0.1, a new connection per request, whole body. "
        "GC pauses: time inside full/partial garbage collections during a render "
        "(`gc.callbacks`); a gen-2 pass over Guardian's heap (60 results of history per "
        "check) lands in whichever code allocates at that moment."
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--renders", type=int, default=30)
    ap.add_argument("--targets", type=int, default=1000)
    ap.add_argument("--src", type=Path, default=REPO / "src")
    ap.add_argument("--label", default="after")
    ap.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
    ap.add_argument("--render-only", action="store_true", help="rewrite the .md, run nothing")
    args = ap.parse_args(argv)
    if args.worker:
        src, targets, renders, seed = args.worker
        print(json.dumps(worker(Path(src), int(targets), int(renders), int(seed))))
        return 0
    path = RESULTS / "metrics.json"
    labels: dict[str, dict[str, Any]] = {}
    if path.exists():
        labels = json.loads(path.read_text()).get("labels", {})
    runs = []
    for i in range(0 if args.render_only else args.runs):
        out = subprocess.run(
            [PYTHON, __file__, "--worker", str(args.src.resolve()), str(args.targets),
             str(args.renders), str(i)],
            capture_output=True, text=True, timeout=1800,
            env={**os.environ, "PYTHONPATH": str(args.src.resolve())},
        )
        if out.returncode != 0:
            raise SystemExit(f"worker failed:\n{out.stderr[-3000:]}")
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{args.label} run {i + 1}: {r['bytes'] / 1e6:.2f} MB, render p50 "
              f"{pct(r['render_s'], 50) * 1000:.1f} ms p99 {pct(r['render_s'], 99) * 1000:.1f}"
              f" ms, GET p50 {pct(r['http_s'], 50) * 1000:.1f} ms, promtool {r['promtool']}",
              flush=True)
        runs.append(r)
    if runs:
        labels[args.label] = summarize(runs)
    md = render(labels, args.runs, args.renders)
    print(md)
    write_results("metrics", {"targets": args.targets, "renders": args.renders,
                              "labels": labels}, md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
