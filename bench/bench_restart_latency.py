"""Restart latency of a supervised HTTP server under real SIGKILLs.

For each of N rounds: SIGKILL the server's PID, then measure
  kill -> detect    : the recovery manager's ``exited`` event (from the child-exit event)
  kill -> answering : the restarted server (a new PID) answers HTTP 200
Usage: PYTHONPATH=src python bench/bench_restart_latency.py [N]
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import statistics
import sys
import time

import httpx

from guardian.config.schema import Config, RecoveryConfig, ServiceConfig, TargetConfig
from guardian.core.clock import SystemClock
from guardian.core.events import Event, EventBus, RecoveryEvent, RecoveryKind
from guardian.recovery.manager import RecoveryManager
from guardian.services.lifecycle import ServiceLifecycle
from guardian.services.process.backend import ProcessBackend


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(p / 100 * (len(xs) - 1)))]


async def main(rounds: int) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    argv = [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(port)]
    target = TargetConfig(
        name="web",
        service=ServiceConfig(backend="process", command=argv),
        # No cooldown so each round measures the mechanism, not the policy's wait.
        # min_uptime 0: each round kills the child soon after it answers, on purpose.
        recovery=RecoveryConfig(
            cooldown=0, max_attempts=rounds + 1, grace_period=0, min_uptime=0
        ),
    )
    backend = ProcessBackend("web", argv, stop_timeout=2)
    bus = EventBus()
    detected: asyncio.Queue[float] = asyncio.Queue()

    def on_event(e: Event) -> None:
        if isinstance(e, RecoveryEvent) and e.kind == RecoveryKind.EXITED:
            detected.put_nowait(time.perf_counter())

    bus.subscribe(on_event)
    mgr = RecoveryManager(Config(targets=[target]), bus, {"web": backend}, SystemClock())
    detect: list[float] = []
    answer: list[float] = []
    async with httpx.AsyncClient(timeout=0.5) as client:

        async def wait_http(not_pid: int | None) -> float:
            while True:
                pid = backend.pid
                if pid is not None and pid != not_pid:
                    try:
                        if (await client.get(url)).status_code == 200:
                            return time.perf_counter()
                    except httpx.HTTPError:
                        pass
                await asyncio.sleep(0.002)

        try:
            await ServiceLifecycle(
                mgr.config, mgr.backends, mgr.clock, observer=mgr
            ).start_all()
            await asyncio.wait_for(wait_http(None), 10)
            for _ in range(rounds):
                pid = backend.pid
                assert pid is not None
                t0 = time.perf_counter()
                os.kill(pid, signal.SIGKILL)
                t_detect = await asyncio.wait_for(detected.get(), 5)
                t_up = await asyncio.wait_for(wait_http(pid), 10)
                detect.append((t_detect - t0) * 1000)
                answer.append((t_up - t0) * 1000)
        finally:
            await mgr.aclose()
            await backend.aclose()

    print(f"supervised http.server, {rounds} SIGKILLs (ms)")
    print(f"{'metric':<26}{'median':>10}{'p95':>10}{'max':>10}")
    for name, xs in (("kill -> exit detected", detect), ("kill -> new pid answers", answer)):
        print(f"{name:<26}{statistics.median(xs):>10.1f}{pct(xs, 95):>10.1f}{max(xs):>10.1f}")


if __name__ == "__main__":
    logging.getLogger("guardian").setLevel(logging.ERROR)  # keep the table readable
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 25))
