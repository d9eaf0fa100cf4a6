"""An idle API thread sleeps: no 10 Hz tick, yet a current Date header and a prompt stop."""

from __future__ import annotations

import asyncio
import sys
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path

import httpx
import pytest

from guardian.api.app import create_app, serve
from testkit.api import make_view


def _switches(native_id: int) -> int:
    status = Path(f"/proc/self/task/{native_id}/status").read_text()
    return sum(
        int(line.split(":")[1])
        for line in status.splitlines()
        if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches"))
    )


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
async def test_idle_api_thread_does_not_wake() -> None:
    server = await serve(create_app(make_view()), "127.0.0.1", 0)
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=5) as c:
            assert (await c.get("/livez")).status_code == 200
        await asyncio.sleep(0.3)  # the closed connection is handled and forgotten
        thread = server._thread
        assert thread is not None and thread.native_id is not None
        before = _switches(thread.native_id)
        await asyncio.sleep(1.5)  # uvicorn's own loop wakes 15 times in this span
        assert _switches(thread.native_id) - before <= 1
    finally:
        await asyncio.wait_for(server.stop(), 10)


@pytest.mark.slow
async def test_date_header_is_current_without_the_tick() -> None:
    server = await serve(create_app(make_view()), "127.0.0.1", 0)
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=5) as c:
            first = parsedate_to_datetime((await c.get("/livez")).headers["date"])
            assert abs((first - datetime.now(UTC)).total_seconds()) <= 2
            await asyncio.sleep(1.2)
            second = parsedate_to_datetime((await c.get("/livez")).headers["date"])
            assert second > first
    finally:
        await asyncio.wait_for(server.stop(), 10)


async def test_stop_wakes_a_sleeping_server() -> None:
    server = await serve(create_app(make_view()), "127.0.0.1", 0)
    await asyncio.sleep(0.2)  # asleep in its main loop, nothing scheduled
    thread = server._thread
    assert thread is not None
    await asyncio.wait_for(server.stop(), 10)
    # Not woken, it would sleep on: stop() would give up and leave the thread running.
    assert not thread.is_alive()
