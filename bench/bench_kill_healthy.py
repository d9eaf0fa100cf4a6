"""Kill -> healthy: how long after a SIGKILL does Guardian *say* the stack is healthy?

Guardian (in process, the real runtime, default recovery: min_uptime 10 s, startup phase
on) supervises the ComfyUI simulator with a boot delay (``--startup-delay``: it listens
only after that long, like a real ComfyUI loading nodes). Each round SIGKILLs the child,
polls the port every 5 ms for the moment the new child listens (its boot end) and polls
:func:`guardian.api.views.stack_health` (what ``/api/health``, ``/readyz``, the status
page and the metrics report) every 5 ms until it says healthy. Goal (issue 22): kill ->
healthy <= boot + 1 s at any check interval; "after listening" is that margin.

Usage: PYTHONPATH=src python bench/bench_kill_healthy.py [--rounds 3] [--boot 2]
       [--intervals 5 30] [--label after] (results/kill_healthy[-LABEL].md/json)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from guardian.api.views import stack_health
from guardian.config.schema import Config
from guardian.runtime import Guardian

RESULTS = Path(__file__).resolve().parent / "results"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.05)
        return s.connect_ex(("127.0.0.1", port)) == 0


def config(tmp: Path, port: int, boot: float, interval: float) -> Config:
    sim = [sys.executable, "-m", "guardian.demo.comfyui.server", "--device", "cpu",
           "--port", str(port), "--startup-delay", str(boot)]
    return Config.model_validate({
        "guardian": {"log_dir": str(tmp / "logs"), "report_dir": str(tmp / "reports"),
                     "state_dir": str(tmp / "state"), "jitter": 0},
        "api": {"enabled": False},
        "targets": [{
            "name": "comfyui",
            "service": {"backend": "process", "command": sim, "stop_timeout": 2},
            # Defaults but for the breaker: every round is one more kill.
            "recovery": {"cooldown": 0, "max_attempts": 1000, "window": 1},
            "checks": [{"kind": "comfyui", "url": f"http://127.0.0.1:{port}",
                        "interval": interval, "timeout": 1}],
        }],
    })


async def poll(pred: Callable[[], bool], period: float, timeout: float = 120) -> bool:
    end = time.perf_counter() + timeout
    while not pred():  # the port and the health are polled, as a client would
        if time.perf_counter() > end:
            return False
        await asyncio.sleep(period)
    return True


async def run_variant(rounds: int, boot: float, interval: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as d:
        port = free_port()
        g = Guardian(config(Path(d), port, boot, interval))
        after: list[float] = []
        total: list[float] = []

        def healthy() -> bool:
            return stack_health(g)[0] == "healthy"

        await g.start()
        try:
            await poll(healthy, 0.05)
            for _ in range(rounds):
                pid = g.backends["comfyui"].pid  # type: ignore[attr-defined]
                t0 = time.perf_counter()
                os.kill(pid, signal.SIGKILL)
                await poll(lambda: not listening(port), 0.005)
                await poll(lambda: not healthy(), 0.005)
                await poll(lambda: listening(port), 0.005)
                t_listen = time.perf_counter()
                if not await poll(healthy, 0.005, timeout=3 * interval + 30):
                    raise SystemExit(f"never healthy again (interval {interval:g} s)")
                t_ok = time.perf_counter()
                after.append(t_ok - t_listen)
                total.append(t_ok - t0)
                await asyncio.sleep(0.5)
        finally:
            await g.stop()
    return {
        "boot_s": boot, "interval_s": interval, "rounds": rounds,
        "healthy_after_listening_s": {"median": statistics.median(after), "max": max(after)},
        "kill_to_healthy_s": {"median": statistics.median(total), "max": max(total)},
    }


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--boot", type=float, default=2.0)
    ap.add_argument("--intervals", type=float, nargs="+", default=[5.0, 30.0])
    ap.add_argument("--label", default="")
    a = ap.parse_args()
    out = [await run_variant(a.rounds, a.boot, i) for i in a.intervals]
    lines = [f"kill -> healthy ({a.label or 'this build'}; simulator boot {a.boot:g} s,"
             f" {a.rounds} kills each, stack_health polled every 5 ms)", "",
             "| check interval | kill → healthy median / max | healthy after listening"
             " median / max |", "| --- | --- | --- |"]
    for r in out:
        h, t = r["healthy_after_listening_s"], r["kill_to_healthy_s"]
        lines.append(f"| {r['interval_s']:g} s | {t['median']:.2f} / {t['max']:.2f} s"
                     f" | {h['median']:.2f} / {h['max']:.2f} s |")
    print("\n".join(lines))
    name = "kill_healthy" + (f"-{a.label}" if a.label else "")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(out, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    asyncio.run(main())
