"""The API stays available to its users under hostile clients (issue 21, attack 10).

The real server on its own thread: 200 slow-loris sockets and pipelined requests whose
answers nobody reads no longer turn normal requests away; a body over the cap is 413,
not 431; fifty concurrent restart requests for one target make one restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from pathlib import Path

import pytest

from guardian.api.app import create_app
from guardian.api.bridge import LoopBridge
from guardian.api.server import ServeLimits, serve
from guardian.config.load import load_config
from guardian.runtime import Guardian
from testkit.api import make_view

GET = b"GET /livez HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"


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


def _all_at_once(port: int, data: bytes, n: int) -> list[bytes]:
    """``n`` connections send ``data`` before any answer is read; their answers."""
    socks = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(n)]
    for s in socks:
        s.sendall(data)
    out = []
    for s in socks:
        got = b""
        with s:
            while chunk := s.recv(65536):
                got += chunk
        out.append(got)
    return out


@pytest.mark.slow
async def test_slow_loris_sockets_give_way_to_real_requests() -> None:
    limits = ServeLimits(max_connections=64, header_timeout=30)
    server = await serve(create_app(make_view()), "127.0.0.1", 0, limits)
    loris = []
    try:
        for _ in range(200):
            s = socket.create_connection(("127.0.0.1", server.port))
            s.sendall(b"GET /livez HTTP/1.1\r\nHost: 12")  # and then nothing, for 30 s
            loris.append(s)
        await asyncio.sleep(1.2)  # older than EVICT_AFTER: a fresh head may still be in flight
        replies = [await asyncio.to_thread(_exchange, server.port, GET) for _ in range(50)]
        ok = sum(r.startswith(b"HTTP/1.1 200") for r in replies)
        assert ok == 50, [r[:40] for r in replies if not r.startswith(b"HTTP/1.1 200")]
        # Every loris socket beyond the cap gave way (or, while fresh, was turned away).
        stats = server.stats
        assert stats.evicted >= 1 and stats.evicted + stats.rejected_connections >= 136
    finally:
        for s in loris:
            s.close()
        await server.stop()


@pytest.mark.slow
async def test_unread_pipelined_answers_are_aborted_after_the_write_timeout() -> None:
    limits = ServeLimits(max_connections=16, header_timeout=30, write_timeout=0.5)
    server = await serve(create_app(make_view()), "127.0.0.1", 0, limits)
    hogs = []
    try:
        many = b"GET /api/status HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" * 2000
        for _ in range(8):
            s = socket.create_connection(("127.0.0.1", server.port))
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                s.sendall(many)  # never reads a byte of the answers
            hogs.append(s)
        deadline = time.monotonic() + 20
        gone = lambda: server.stats.write_timeouts + server.stats.evicted  # noqa: E731
        while gone() < 8 and time.monotonic() < deadline:  # noqa: ASYNC110 (another thread)
            await asyncio.sleep(0.1)
        # Each hog aborted for not reading (or, idle between two answers, gave way).
        assert gone() >= 8 and server.stats.write_timeouts >= 1
        reply = await asyncio.to_thread(_exchange, server.port, GET)
        assert reply.startswith(b"HTTP/1.1 200")
    finally:
        for s in hogs:
            s.close()
        await server.stop()


async def test_oversized_body_is_413_not_431() -> None:
    limits = ServeLimits(max_header_bytes=4096, max_body_bytes=1024)
    server = await serve(create_app(make_view()), "127.0.0.1", 0, limits)
    try:
        head = (b"POST /api/checks/run HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Authorization: Bearer s3cret-token\r\nContent-Length: %d\r\n\r\n")
        declared = await asyncio.to_thread(_exchange, server.port, head % 100_000 + b"x" * 8192)
        assert declared.startswith(b"HTTP/1.1 413"), declared[:60]
        chunked = (b"POST /api/checks/run HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                   b"Transfer-Encoding: chunked\r\n\r\n" + b"2000\r\n" + b"x" * 8192 + b"\r\n")
        streamed = await asyncio.to_thread(_exchange, server.port, chunked)
        assert streamed.startswith(b"HTTP/1.1 413"), streamed[:60]
        assert server.stats.body_too_large == 2 and server.stats.header_too_large == 0
    finally:
        await server.stop()


@pytest.mark.slow
async def test_concurrent_restart_requests_coalesce_into_one(tmp_path: Path) -> None:
    """Fifty POSTs at once against a real Guardian with a real supervised process (one that
    takes its full 1 s stop_timeout to stop, so every request arrives during the restart)."""
    import sys

    cfg_path = tmp_path / "g.toml"
    cfg_path.write_text(f"""
[guardian]
log_dir = "{tmp_path / 'logs'}"
state_dir = "{tmp_path / 'state'}"
report_dir = "{tmp_path / 'reports'}"
[api]
enabled = false
token = "t0ken-for-the-test"
max_concurrency = 64
[[targets]]
name = "svc"
[targets.service]
backend = "process"
command = ["{sys.executable}", "-c", "import signal, time; signal.signal(signal.SIGTERM, \
signal.SIG_IGN); time.sleep(600)"]
stop_timeout = 1
[targets.recovery]
min_uptime = 0
[[targets.checks]]
kind = "service"
interval = 60
""")
    guardian = Guardian(load_config(cfg_path))
    await guardian.start()
    try:
        view = LoopBridge(guardian, asyncio.get_running_loop())
        server = await serve(create_app(view), "127.0.0.1", 0, ServeLimits(max_connections=128))
        try:
            post = (b"POST /api/targets/svc/restart HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                    b"Authorization: Bearer t0ken-for-the-test\r\n"
                    b"Connection: close\r\nContent-Length: 0\r\n\r\n")
            starts0 = guardian.backends["svc"].starts  # type: ignore[attr-defined]
            replies = await asyncio.to_thread(_all_at_once, server.port, post, 50)
            assert all(r.startswith(b"HTTP/1.1 202") for r in replies), [
                r for r in replies if not r.startswith(b"HTTP/1.1 202")][:2]
            bodies = [json.loads(r.split(b"\r\n\r\n", 1)[1]) for r in replies]
            assert {b["id"] for b in bodies} == {1}  # every caller got the one restart
            assert sorted(b["state"] for b in bodies) == ["coalesced"] * 49 + ["queued"]
            assert await guardian.restart("svc")  # joins it: waits for its outcome
            assert guardian.backends["svc"].starts - starts0 == 1  # type: ignore[attr-defined]
        finally:
            await server.stop()
    finally:
        await guardian.stop()


async def test_api_answers_stay_bounded_however_big_a_targets_strings() -> None:
    """A megabyte prompt id and reason from a target: a bounded answer with a marker."""
    import dataclasses

    from guardian.core.result import Status
    from testkit.api import healthy_results

    huge = "p" * 1_000_000
    results = [dataclasses.replace(r, reason=huge, status=Status.FAILED,
                                   values={**r.values, "running_prompt_id": huge})
               for r in healthy_results()]
    server = await serve(create_app(make_view(results=results)), "127.0.0.1", 0)
    try:
        for path in (b"/api/status", b"/api/health"):
            reply = await asyncio.to_thread(
                _exchange, server.port,
                b"GET " + path + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            assert reply.startswith(b"HTTP/1.1 "), reply[:40]
            assert len(reply) < 100_000, (path, len(reply))
            assert b"[truncated" in reply
    finally:
        await server.stop()
