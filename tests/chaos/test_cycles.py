"""Crash/restart cycles of a supervised process leak nothing.

A real child (``sleep 60``) is started by the ProcessBackend, SIGKILLed, its exit noticed
(the exit listener fires exactly once per crash), and started again, CYCLES times: once
with the test driving the restarts, once with the RecoveryManager doing it from the exit
event under a policy that allows unbounded restarts (cooldown 0, huge max_attempts).
Afterwards: no child processes of this process remain, the open file descriptors, the
threads and the asyncio tasks are back at their baseline (fds within a small margin).

CYCLES is 1000: one cycle (spawn ``sleep``, SIGKILL, reap, notice) measured ~3 ms on the
2-core box with an asyncio-subprocess backend, so 1000 take a few seconds; the test
prints its per-cycle cost. ``GUARDIAN_CHAOS_CYCLES=N`` overrides the count (a slower
backend or machine can lower it without editing the test).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import psutil
import pytest

from guardian.core.clock import SystemClock
from guardian.services.base import ServiceState

pytestmark = pytest.mark.skipif(os.name == "nt", reason="POSIX signals and /proc")

CYCLES = int(os.environ.get("GUARDIAN_CHAOS_CYCLES", "1000"))
SLEEP = shutil.which("sleep") or "/bin/sleep"


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


async def wait_until(pred, timeout: float = 5.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        await asyncio.sleep(0.001)
    return bool(pred())


@pytest.mark.timeout(240)
async def test_crash_restart_cycles_leak_nothing(tmp_path: Path) -> None:
    process = pytest.importorskip("guardian.services.process.backend")
    backend = process.ProcessBackend(
        "victim", [SLEEP, "60"], log_file=tmp_path / "victim.log", stop_timeout=2,
        clock=SystemClock(),
    )
    exits: list[int | None] = []
    backend.add_exit_listener(exits.append)
    me = psutil.Process()
    await asyncio.sleep(0)
    base_fds, base_threads = fd_count(), threading.active_count()
    base_tasks = len(asyncio.all_tasks())
    pids: set[int] = set()
    t0 = time.monotonic()
    try:
        for i in range(CYCLES):
            await backend.start()
            st = await backend.status()
            assert st.state is ServiceState.RUNNING and st.pid, f"cycle {i}: {st}"
            assert st.pid not in pids, f"cycle {i}: pid {st.pid} reused while tracked"
            pids.add(st.pid)
            os.kill(st.pid, signal.SIGKILL)
            assert await wait_until(lambda i=i: len(exits) == i + 1), f"cycle {i}: no exit seen"
            st = await backend.status()
            assert st.state is not ServiceState.RUNNING, f"cycle {i}: still running: {st}"
            pids.discard(st.pid or -1)
    finally:
        await backend.aclose()
    per_cycle_ms = (time.monotonic() - t0) / CYCLES * 1000
    print(f"{CYCLES} cycles, {per_cycle_ms:.1f} ms per cycle")

    assert len(exits) == CYCLES  # exactly one exit notification per crash
    assert all(c in (-signal.SIGKILL, 128 + signal.SIGKILL, None) for c in exits), set(exits)
    assert await wait_until(lambda: not me.children(recursive=True), 5), me.children()
    assert await wait_until(lambda: threading.active_count() <= base_threads, 5), (
        threading.enumerate()
    )
    await asyncio.sleep(0.05)
    assert len(asyncio.all_tasks()) <= base_tasks, asyncio.all_tasks()
    assert abs(fd_count() - base_fds) <= 2, (base_fds, os.listdir("/proc/self/fd"))


def _leak_free_config(sleep: str, tmp: Path) -> str:
    return f"""
[[targets]]
name = "victim"
[targets.service]
backend = "process"
command = ["{sleep}", "60"]
log_file = "{tmp / "victim.log"}"
stop_timeout = 2
[targets.recovery]
cooldown = 0
max_attempts = 1000000
window = 1
backoff_factor = 1.0
backoff_max = 0
grace_period = 0
min_uptime = 0
stable_period = 0
"""


@pytest.mark.timeout(240)
async def test_recovery_manager_restart_cycles_leak_nothing(tmp_path: Path) -> None:
    pytest.importorskip("guardian.services.process.backend")
    from guardian.config.load import parse_config
    from guardian.core.events import EventBus, RecoveryEvent, RecoveryKind
    from guardian.recovery.breakers import MemoryBreakerStore
    from guardian.recovery.manager import RecoveryManager
    from guardian.services.factory import build_backend
    from guardian.services.lifecycle import ServiceLifecycle

    cfg = parse_config(_leak_free_config(SLEEP, tmp_path))
    clock = SystemClock()
    bus = EventBus()
    succeeded: list[RecoveryEvent] = []
    bus.subscribe(
        lambda e: succeeded.append(e)
        if isinstance(e, RecoveryEvent) and e.kind is RecoveryKind.RESTART_SUCCEEDED
        else None
    )
    me = psutil.Process()
    await asyncio.sleep(0)
    base_fds, base_threads = fd_count(), threading.active_count()
    base_tasks = len(asyncio.all_tasks())
    backend = build_backend(cfg.targets[0], clock)
    assert backend is not None
    manager = RecoveryManager(cfg, bus, {"victim": backend}, clock, store=MemoryBreakerStore())
    t0 = time.monotonic()
    try:
        await ServiceLifecycle(
            manager.config, manager.backends, manager.clock, observer=manager
        ).start_all()
        for i in range(CYCLES):
            st = await backend.status()
            assert st.state is ServiceState.RUNNING and st.pid, f"cycle {i}: {st}"
            old = st.pid
            os.kill(old, signal.SIGKILL)

            def restarted(old: int = old, i: int = i) -> bool:
                pid = getattr(backend, "pid", None)
                return pid is not None and pid != old and len(succeeded) >= i + 1

            assert await wait_until(restarted), f"cycle {i}: not restarted"
    finally:
        await manager.aclose()
        await backend.aclose()
    per_cycle_ms = (time.monotonic() - t0) / CYCLES * 1000
    print(f"{CYCLES} manager cycles, {per_cycle_ms:.1f} ms per cycle")

    assert len(succeeded) == CYCLES  # one restart per crash: no duplicates, none missed
    assert await wait_until(lambda: not me.children(recursive=True), 5), me.children()
    assert await wait_until(lambda: threading.active_count() <= base_threads, 5)
    await asyncio.sleep(0.05)
    assert len(asyncio.all_tasks()) <= base_tasks, asyncio.all_tasks()
    assert abs(fd_count() - base_fds) <= 2, (base_fds, os.listdir("/proc/self/fd"))
