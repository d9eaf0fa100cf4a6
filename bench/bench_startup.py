"""Startup phase: how soon after a service answers again does Guardian see it healthy?

Guardian (in process, the real runtime) supervises the ComfyUI simulator with a boot delay
(``--startup-delay``: it listens only after that long, like a real ComfyUI loading nodes).
Each round SIGKILLs the child; the bench polls the port every 5 ms to find the moment the
new child listens (its boot end), and waits for Guardian's first OK result of the new
instance. "seen after listening" = that OK's finish - boot end: the startup probe period
bounds it (goal: 1 s). Variants: the startup phase on (probe every 1 s) and off
(``startup_timeout = 0``: the check's own interval). Incidents opened and failed starts
are counted: a normal boot must open none.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from guardian.config.schema import Config
from guardian.core.events import Event, IncidentEvent, RecoveryEvent, RecoveryKind
from guardian.core.result import CheckResult, Status
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


def config(tmp: Path, port: int, boot: float, interval: float, startup: bool) -> Config:
    sim = [sys.executable, "-m", "guardian.demo.comfyui.server", "--device", "cpu",
           "--port", str(port), "--startup-delay", str(boot)]
    return Config.model_validate({
        "guardian": {"log_dir": str(tmp / "logs"), "report_dir": str(tmp / "reports"),
                     "state_dir": str(tmp / "state"), "jitter": 0},
        "api": {"enabled": False},
        "targets": [{
            "name": "comfyui",
            "service": {"backend": "process", "command": sim, "stop_timeout": 2},
            "recovery": {"cooldown": 0, "max_attempts": 1000, "window": 1,
                         "startup_timeout": 300 if startup else 0},
            "checks": [{"kind": "comfyui", "url": f"http://127.0.0.1:{port}",
                        "interval": interval, "timeout": 1}],
        }],
    })


async def poll(pred: Callable[[], bool], period: float) -> None:
    """Wait until ``pred()``: the port is outside Guardian, so it can only be polled."""
    while not pred():  # noqa: ASYNC110 - nothing to wait on but the pred itself
        await asyncio.sleep(period)


async def run_variant(rounds: int, boot: float, interval: float, startup: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as d:
        port = free_port()
        g = Guardian(config(Path(d), port, boot, interval, startup))
        oks: list[tuple[float, int | None]] = []  # (perf_counter at OK, pid)
        counts = {"incidents": 0, "restart_failed": 0}

        def on(e: Event) -> None:
            if isinstance(e, CheckResult) and e.status is Status.OK:
                oks.append((time.perf_counter(), g.backends["comfyui"].pid))  # type: ignore[attr-defined]
            elif isinstance(e, IncidentEvent):
                counts["incidents"] += 1
            elif isinstance(e, RecoveryEvent) and e.kind is RecoveryKind.RESTART_FAILED:
                counts["restart_failed"] += 1

        g.bus.subscribe(on)
        await g.start()
        seen: list[float] = []
        total: list[float] = []
        try:
            await poll(lambda: bool(oks), 0.05)
            for _ in range(rounds):
                pid = g.backends["comfyui"].pid  # type: ignore[attr-defined]
                t0 = time.perf_counter()
                os.kill(pid, signal.SIGKILL)
                await poll(lambda: not listening(port), 0.005)
                await poll(lambda: listening(port), 0.005)
                t_listen = time.perf_counter()
                def new_ok(after: float = t_listen, old: int = pid) -> bool:
                    return any(t > after and p not in (None, old) for t, p in oks)

                await poll(new_ok, 0.005)
                t_ok = next(t for t, p in oks if t > t_listen and p not in (None, pid))
                seen.append(t_ok - t_listen)
                total.append(t_ok - t0)
                await asyncio.sleep(0.5)
        finally:
            await g.stop()
    return {
        "startup_phase": startup, "boot_s": boot, "interval_s": interval, "rounds": rounds,
        "seen_after_listening_s": {"median": sorted(seen)[len(seen) // 2], "max": max(seen)},
        "kill_to_healthy_s": {"median": sorted(total)[len(total) // 2], "max": max(total)},
        **counts,
    }


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--boot", type=float, default=2.0)
    ap.add_argument("--interval", type=float, default=5.0)
    a = ap.parse_args()
    out = [await run_variant(a.rounds, a.boot, a.interval, s) for s in (True, False)]
    lines = ["| startup phase | boot | check interval | seen after listening median / max"
             " | kill → healthy median / max | incident events | failed starts |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in out:
        s, t = r["seen_after_listening_s"], r["kill_to_healthy_s"]
        lines.append(
            f"| {'on (probe 1 s)' if r['startup_phase'] else 'off'} | {r['boot_s']:g} s"
            f" | {r['interval_s']:g} s | {s['median']:.2f} / {s['max']:.2f} s"
            f" | {t['median']:.2f} / {t['max']:.2f} s | {r['incidents']} | {r['restart_failed']} |"
        )
    print("\n".join(lines))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "startup.json").write_text(json.dumps(out, indent=2) + "\n")
    (RESULTS / "startup.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    asyncio.run(main())
