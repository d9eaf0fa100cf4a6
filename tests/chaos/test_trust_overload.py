"""A hostile target can never make Guardian "overloaded" (issue 21, attack 6).

A real Guardian (in this process, its own event loop and lag monitor) watches a target
that streams response headers forever and a normal one. Before: the client kept every
header (joined quadratically), the loop stalled for seconds, and the overload rule then
recorded the hostile target's timeouts, and the normal target's, as *skipped*. Now the
hostile one fails every run on its cap, and nothing is skipped.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from guardian.config.load import load_config
from guardian.core.result import Status
from guardian.runtime import Guardian
from testkit.chaos import toml


async def _flood(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\n")
        line = b"X-Junk: " + b"j" * 100 + b"\r\n"
        while True:
            writer.write(line * 512)
            await writer.drain()
    except (ConnectionError, OSError, asyncio.IncompleteReadError):
        pass


async def _normal(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()
    except (ConnectionError, OSError, asyncio.IncompleteReadError):
        pass


@pytest.fixture
async def ports() -> AsyncIterator[tuple[int, int]]:
    hostile = await asyncio.start_server(_flood, "127.0.0.1", 0)
    normal = await asyncio.start_server(_normal, "127.0.0.1", 0)
    yield hostile.sockets[0].getsockname()[1], normal.sockets[0].getsockname()[1]
    for s in (hostile, normal):
        s.close()


@pytest.mark.timeout(60)
async def test_endless_headers_fail_and_nothing_is_skipped(ports: tuple[int, int],
                                                           tmp_path: Path) -> None:
    hostile, normal = ports
    path = tmp_path / "g.toml"
    path.write_text(f"""
[guardian]
log_dir = {toml(tmp_path / "logs")}
state_dir = {toml(tmp_path / "state")}
report_dir = {toml(tmp_path / "reports")}
jitter = 0
[api]
enabled = false
[[targets]]
name = "hostile"
[[targets.checks]]
kind = "http"
url = "http://127.0.0.1:{hostile}/"
interval = 0.5
timeout = 0.4
[[targets]]
name = "normal"
[[targets.checks]]
kind = "http"
url = "http://127.0.0.1:{normal}/"
interval = 0.5
timeout = 0.4
""")
    guardian = Guardian(load_config(path))
    await guardian.start()
    try:
        await asyncio.sleep(5)
    finally:
        await guardian.stop()
    bad = guardian.state.history("hostile", "http")
    good = guardian.state.history("normal", "http")
    assert len(bad) >= 5 and len(good) >= 5
    assert all(r.status is Status.FAILED and "response headers" in r.reason for r in bad), [
        (r.status, r.reason) for r in bad]
    assert all(r.status is Status.OK for r in good), [(r.status, r.reason) for r in good]
