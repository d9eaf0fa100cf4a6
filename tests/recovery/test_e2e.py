"""Recovery against real child processes, real signals, a real HTTP check and the Engine."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import socket
import sys
import time
from typing import Any

import httpx
import pytest

from guardian.checks.base import CheckContext
from guardian.checks.http import check as http_check
from guardian.checks.http.check import HttpCheckConfig
from guardian.config.schema import Config, RecoveryConfig, ServiceConfig, TargetConfig
from guardian.core.clock import SystemClock
from guardian.core.events import Event, EventBus, RecoveryEvent, RecoveryKind
from guardian.core.result import CheckResult, Status
from guardian.core.state import State
from guardian.engine.scheduler import Engine
from guardian.recovery.manager import RecoveryManager
from guardian.services.lifecycle import ServiceLifecycle
from guardian.services.process.backend import ProcessBackend

pytestmark = [
    pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals"),
    pytest.mark.timeout(30),
]

PY = sys.executable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def until(pred: Any, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        await asyncio.sleep(0.01)
    return bool(pred())


async def http_ok(url: str, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=0.5) as c:
        while time.monotonic() < deadline:
            try:
                if (await c.get(url)).status_code == 200:
                    return True
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.02)
    return False


def rig(t: TargetConfig, backend: ProcessBackend) -> tuple[RecoveryManager, list[RecoveryEvent]]:
    bus = EventBus()
    events: list[RecoveryEvent] = []

    def collect(e: Event) -> None:
        if isinstance(e, RecoveryEvent):
            events.append(e)

    bus.subscribe(collect)
    mgr = RecoveryManager(Config(targets=[t]), bus, {t.name: backend}, SystemClock())
    return mgr, events


async def test_crash_loop_exactly_max_attempts_then_breaker() -> None:
    argv = [PY, "-c", "import sys; sys.exit(3)"]
    t = TargetConfig(
        name="crashy",
        service=ServiceConfig(backend="process", command=argv),
        recovery=RecoveryConfig(
            cooldown=0.05, backoff_factor=1.0, max_attempts=3, window=60, grace_period=0,
            min_uptime=0,
        ),
    )
    backend = ProcessBackend("crashy", argv, stop_timeout=1)
    mgr, events = rig(t, backend)
    try:
        await ServiceLifecycle(
            mgr.config, mgr.backends, mgr.clock, observer=mgr
        ).start_all()
        assert await until(lambda: any(e.kind == RecoveryKind.BREAKER_OPEN for e in events))
        await asyncio.sleep(0.5)  # nothing more may happen
        kinds = [e.kind for e in events]
        assert kinds.count(RecoveryKind.RESTART_STARTED) == 3
        assert kinds.count(RecoveryKind.BREAKER_OPEN) == 1
        assert kinds.count(RecoveryKind.EXITED) == 4
        attempts = [e.attempt for e in events if e.kind == RecoveryKind.RESTART_STARTED]
        assert attempts == [1, 2, 3]
        # cooldown respected between attempts
        times = [e.time for e in events if e.kind == RecoveryKind.RESTART_STARTED]
        gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(times)]
        assert all(g >= 0.045 for g in gaps), gaps
        assert backend.last_exit_code == 3
    finally:
        await mgr.aclose()
        await backend.aclose()


async def test_sigkilled_http_server_restarted_from_exit_event() -> None:
    port = free_port()
    argv = [PY, "-m", "http.server", "--bind", "127.0.0.1", str(port)]
    t = TargetConfig(
        name="web",
        service=ServiceConfig(backend="process", command=argv),
        recovery=RecoveryConfig(cooldown=0.1, grace_period=0, min_uptime=0),
    )
    backend = ProcessBackend("web", argv, stop_timeout=2)
    mgr, events = rig(t, backend)
    url = f"http://127.0.0.1:{port}/"
    try:
        await ServiceLifecycle(
            mgr.config, mgr.backends, mgr.clock, observer=mgr
        ).start_all()
        assert await http_ok(url)
        old = backend.pid
        assert old is not None
        t0 = time.monotonic()
        os.kill(old, signal.SIGKILL)
        assert await until(lambda: any(e.kind == RecoveryKind.EXITED for e in events), 2)
        exited = next(e for e in events if e.kind == RecoveryKind.EXITED)
        assert exited.values["exit_code"] == -9
        assert await until(lambda: any(e.kind == RecoveryKind.RESTART_SUCCEEDED for e in events), 5)
        new = backend.pid
        assert new is not None and new != old
        ok = next(e for e in events if e.kind == RecoveryKind.RESTART_SUCCEEDED)
        assert ok.values["pid"] == new
        assert await http_ok(url)
        assert time.monotonic() - t0 < 10
        assert mgr.snapshot()["web"]["attempts"] == 1
    finally:
        await mgr.aclose()
        await backend.aclose()


HUNG_SERVER = """
import socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(16)
print("listening", flush=True)
conns = []
while True:
    c, _ = s.accept(); conns.append(c)  # accept and never answer
"""


async def test_hung_liveness_restarts_after_threshold_not_before() -> None:
    port = free_port()
    argv = [PY, "-c", HUNG_SERVER, str(port)]
    check_cfg = HttpCheckConfig(
        url=f"http://127.0.0.1:{port}/", interval=0.2, timeout=0.1, liveness=True
    )
    t = TargetConfig(
        name="hung",
        service=ServiceConfig(backend="process", command=argv),
        recovery=RecoveryConfig(
            cooldown=0.1, failure_threshold=3, grace_period=0, min_uptime=0, max_attempts=5
        ),
        checks=[check_cfg],
    )
    clock = SystemClock()
    backend = ProcessBackend("hung", argv, stop_timeout=1)
    bus = EventBus()
    log: list[Event] = []
    bus.subscribe(log.append)
    mgr = RecoveryManager(Config(targets=[t]), bus, {"hung": backend}, clock)
    state = State(Config(targets=[t]), bus)
    check = http_check.create(check_cfg, CheckContext("hung", clock, backend))
    engine = Engine(state, [("hung", check)], clock, jitter=0, first_run_spread=0)
    try:
        await ServiceLifecycle(
            mgr.config, mgr.backends, mgr.clock, observer=mgr
        ).start_all()
        assert await until(lambda: "listening" in "".join(backend._sink.tail(2)), 5)  # type: ignore[union-attr]
        first_pid = backend.pid
        engine.start()
        assert await until(
            lambda: any(
                isinstance(e, RecoveryEvent) and e.kind == RecoveryKind.RESTART_STARTED for e in log
            ),
            10,
        )
        before = []
        for e in log:
            if isinstance(e, RecoveryEvent) and e.kind == RecoveryKind.RESTART_STARTED:
                break
            if isinstance(e, CheckResult):
                before.append(e.status)
        assert before == [Status.FAILED] * 3  # exactly the threshold, not before
        started = next(
            e
            for e in log
            if isinstance(e, RecoveryEvent) and e.kind == RecoveryKind.RESTART_STARTED
        )
        assert "3 times" in started.reason
        assert await until(lambda: backend.pid not in (None, first_pid), 5)
    finally:
        await engine.aclose()
        await mgr.aclose()
        await backend.aclose()
