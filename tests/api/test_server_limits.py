"""The real uvicorn on its own thread: limits on connections, head size, head time; EMFILE logs."""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import threading
from typing import Any

import pytest

from guardian.api.app import create_app
from guardian.api.bridge import LoopBridge
from guardian.api.server import ServeLimits, ServeStats, _ResourceErrorLog, serve
from guardian.support.fdlimit import FdLimits, api_connection_cap, raise_nofile
from testkit.api import make_view


def _exchange(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
        except (TimeoutError, ConnectionResetError):
            pass
        return out


async def test_serves_on_its_own_thread_and_loop() -> None:
    server = await serve(create_app(make_view()), "127.0.0.1", 0)
    try:
        assert server.loop is not None and server.loop is not asyncio.get_running_loop()
        reply = await asyncio.to_thread(
            _exchange, server.port, b"GET /livez HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Connection: close\r\n\r\n"
        )
        assert reply.startswith(b"HTTP/1.1 200")
    finally:
        await server.stop()


async def test_connections_over_the_cap_get_503_and_are_closed() -> None:
    """Idle connections give way to a new one; when all are busy, a new one gets 503."""
    release = asyncio.Event()

    async def slow_restart(target: str) -> str:
        await release.wait()
        return "done"

    view = make_view(restart_fn=slow_restart)
    limits = ServeLimits(max_connections=3, header_timeout=10)
    server = await serve(create_app(LoopBridge(view, asyncio.get_running_loop())),
                         "127.0.0.1", 0, limits)
    busy = b"POST /api/targets/panel/restart HTTP/1.1\r\nHost: 127.0.0.1\r\n" \
        b"Authorization: Bearer s3cret-token\r\nContent-Length: 0\r\n\r\n"
    held = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(3)]
    try:
        for s in held:
            s.sendall(busy)
        await asyncio.sleep(0.3)
        reply = await asyncio.to_thread(_exchange, server.port, b"")
        assert reply.startswith(b"HTTP/1.1 503") and b"too many connections" in reply
        assert server.stats.rejected_connections >= 1
    finally:
        release.set()
        for s in held:
            s.close()
        await server.stop()


async def test_big_head_431_and_slow_head_408() -> None:
    limits = ServeLimits(max_header_bytes=4096, header_timeout=0.3)
    server = await serve(create_app(make_view()), "127.0.0.1", 0, limits)
    try:
        big = b"GET /livez HTTP/1.1\r\nHost: 127.0.0.1\r\nX-A: " + b"a" * 8192 + b"\r\n\r\n"
        assert (await asyncio.to_thread(_exchange, server.port, big)).startswith(
            b"HTTP/1.1 431"
        )
        half = b"GET /livez HTTP/1.1\r\nHost: 127"
        assert (await asyncio.to_thread(_exchange, server.port, half)).startswith(
            b"HTTP/1.1 408"
        )
        assert await asyncio.to_thread(_exchange, server.port, b"") == b""  # silent: closed
        ok = b"GET /livez HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        assert (await asyncio.to_thread(_exchange, server.port, ok)).startswith(b"HTTP/1.1 200")
        assert server.stats.header_too_large == 1 and server.stats.header_timeouts == 2
    finally:
        await server.stop()


def test_accept_emfile_storm_is_one_log_line(caplog: pytest.LogCaptureFixture) -> None:
    stats = ServeStats()
    handler = _ResourceErrorLog(stats, interval=60)
    loop = asyncio.new_event_loop()
    try:
        with caplog.at_level(logging.ERROR, logger="guardian.api"):
            for _ in range(1000):
                handler(loop, {
                    "message": "socket.accept() out of system resource",
                    "exception": OSError(errno.EMFILE, "Too many open files"),
                })
    finally:
        loop.close()
    assert stats.accept_errors == 1000
    lines = [r for r in caplog.records if r.name == "guardian.api"]
    assert len(lines) == 1 and lines[0].exc_info is None
    assert "Too many open files" in lines[0].getMessage()


async def test_bridge_runs_reads_and_actions_on_the_owner_loop() -> None:
    owner = threading.get_ident()
    calls: list[int] = []
    view = make_view()

    async def restart(target: str) -> str:
        calls.append(threading.get_ident())
        return f"restarted {target}"

    view.restart_fn = restart
    original = view.recovery_snapshot

    def snapshot() -> dict[str, dict[str, Any]]:
        calls.append(threading.get_ident())
        return original()

    view.recovery_snapshot = snapshot  # type: ignore[method-assign]
    bridge = LoopBridge(view, asyncio.get_running_loop())

    def from_api_thread() -> tuple[str, int]:
        first = bridge.recovery_snapshot()
        bridge.recovery_snapshot()  # cached: no second call on the owner loop
        return asyncio.run(bridge.restart("panel")), len(first)

    message, n = await asyncio.to_thread(from_api_thread)
    assert message == "restarted panel" and n == 2
    assert calls == [owner, owner]
    bridge.close()


def test_fd_cap_is_a_quarter_of_the_limit() -> None:
    assert api_connection_cap(64, FdLimits(256, 256)) == 64
    assert api_connection_cap(100, FdLimits(256, 256)) == 64
    assert api_connection_cap(100, FdLimits(20, 20)) == 8
    assert api_connection_cap(100, FdLimits(None, None)) == 100


def test_raise_nofile_moves_soft_toward_hard() -> None:
    resource = pytest.importorskip("resource")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, 200), hard))
        got = raise_nofile(target=min(hard, 4096) if hard != resource.RLIM_INFINITY else 4096)
        assert got.raised_from == min(soft, 200)
        assert got.soft is not None and got.soft > 200 and got.open_now
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_bridge_reads_degrade_when_the_owner_loop_does_not_answer() -> None:
    stalled = asyncio.new_event_loop()  # never run: like a main loop stuck for good
    try:
        bridge = LoopBridge(make_view(), stalled, read_timeout=0.05)
        assert bridge.recovery_snapshot() == {}
        assert bridge.incidents() == []
        assert bridge.incident(1) is None
        bridge.close()
    finally:
        stalled.close()
