"""Hostile endpoints all at once, checked by the real http check, beside a normal target.

First the servers themselves are proven hostile over raw sockets (so the engine test
cannot pass against servers that quietly behave). Then one engine runs the real http
check against every hostile endpoint concurrently while a normal target keeps its 0.2 s
cadence: every hostile result is a *failed* result with a reason, never a crash, a hang
or an ok; the normal target runs on schedule (run count and start lateness); this
process's RSS stays flat (generous bound).
"""

from __future__ import annotations

import asyncio
import gc
import socket
import time

import psutil
import pytest

from guardian.checks.base import CheckContext
from guardian.config.load import parse_config
from guardian.core.clock import SystemClock
from guardian.core.events import EventBus
from guardian.core.result import Status
from guardian.core.state import State
from guardian.engine.scheduler import Engine

HOSTILE = ("hang", "endless", "garbage_json", "slowloris", "redirect", "reset")


def _request(port: int, timeout: float = 1.0) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    return s


def _recv_for(s: socket.socket, seconds: float, cap: int = 4 << 20) -> bytes:
    data = b""
    end = time.monotonic() + seconds
    while time.monotonic() < end and len(data) < cap:
        s.settimeout(max(0.01, end - time.monotonic()))
        try:
            chunk = s.recv(65536)
        except TimeoutError:
            break
        if not chunk:
            break
        data += chunk
    return data


def test_servers_are_really_hostile(hostile_ports: dict[str, int]) -> None:
    with _request(hostile_ports["hang"]) as s:
        assert _recv_for(s, 0.5) == b""
    with _request(hostile_ports["endless"]) as s:
        assert len(_recv_for(s, 2.0, cap=2 << 20)) >= 2 << 20  # 2 MiB and counting
    with _request(hostile_ports["garbage_json"]) as s:
        head, _, body = _recv_for(s, 1.0).partition(b"\r\n\r\n")
        assert b"application/json" in head and body.startswith(b'{"status"')
        with pytest.raises(ValueError):
            __import__("json").loads(body)
    with _request(hostile_ports["slowloris"]) as s:
        got = _recv_for(s, 0.7)
        assert got.startswith(b"HTTP/1.1 200 OK\r\nX") and b"\r\n\r\n" not in got
    with _request(hostile_ports["redirect"]) as s:
        loc = f"Location: http://127.0.0.1:{hostile_ports['redirect']}/".encode()
        assert loc in _recv_for(s, 1.0)
    with _request(hostile_ports["reset"]) as s, pytest.raises(ConnectionResetError):
        for _ in range(50):
            if not s.recv(1):
                break
    with _request(hostile_ports["normal"]) as s:
        assert _recv_for(s, 0.5).startswith(b"HTTP/1.1 200 OK")


def _config(ports: dict[str, int]) -> str:
    parts = []
    for name in HOSTILE:
        parts.append(f"""
[[targets]]
name = "{name}"
[[targets.checks]]
kind = "http"
url = "http://127.0.0.1:{ports[name]}/"
interval = 0.5
timeout = 0.4
max_body_bytes = 65536
""")
    parts.append(f"""
[[targets]]
name = "normal"
[[targets.checks]]
kind = "http"
url = "http://127.0.0.1:{ports["normal"]}/"
interval = 0.2
timeout = 0.15
""")
    return "".join(parts)


@pytest.mark.timeout(60)
async def test_hostile_endpoints_fail_cleanly_while_normal_target_keeps_cadence(
    hostile_ports: dict[str, int],
) -> None:
    http = pytest.importorskip("guardian.checks.http.check")
    if not hasattr(http, "create"):
        pytest.skip("http check runtime not merged yet")
    from guardian.checks.registry import build_check

    cfg = parse_config(_config(hostile_ports))
    clock = SystemClock()
    state = State(cfg, EventBus())
    checks = [
        (t.name, build_check(c, CheckContext(t.name, clock))) for t in cfg.targets for c in t.checks
    ]
    engine = Engine(state, checks, clock, jitter=0.0, first_run_spread=0.0)
    me = psutil.Process()
    engine.start()
    try:
        await asyncio.sleep(2.0)  # warm-up: clients, pools, first failures
        gc.collect()
        rss0 = me.memory_info().rss
        normal = next(sc for sc in engine.scheduled if sc.target == "normal")
        runs0 = normal.runs
        normal.lateness.clear()
        duration = 8.0
        await asyncio.sleep(duration)
        gc.collect()
        rss1 = me.memory_info().rss
        runs = normal.runs - runs0
        late = sorted(normal.lateness)
    finally:
        await engine.aclose()

    for name in HOSTILE:
        history = state.history(name, "http")
        assert len(history) >= 10, f"{name}: only {len(history)} runs"
        for r in history:
            assert r.status is Status.FAILED and r.reason, f"{name}: {r.status} {r.reason!r}"
    # The normal target: every run ok, on its 0.2 s grid, barely late.
    assert all(r.status is Status.OK for r in state.history("normal", "http"))
    expected = duration / 0.2
    assert runs >= 0.9 * expected, f"normal ran {runs} times in {duration}s, expected ~{expected}"
    p99 = late[int(0.99 * (len(late) - 1))]
    assert p99 < 0.1, f"normal target started up to {p99 * 1000:.0f} ms late (p99)"
    growth = (rss1 - rss0) / 2**20
    assert growth < 20, f"RSS grew {growth:.1f} MiB in {duration}s under hostile load"
