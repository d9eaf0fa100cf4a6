"""The API served by a real uvicorn on 127.0.0.1 inside the caller's event loop."""

from __future__ import annotations

import asyncio
import signal
import socket

import httpx
import pytest

from guardian.api.app import ApiServer, create_app, serve
from testkit.api import make_view


async def test_serve_on_free_port_then_stop_gracefully() -> None:
    handler_before = signal.getsignal(signal.SIGTERM)
    server = await serve(create_app(make_view()), "127.0.0.1", 0)
    try:
        assert server.port > 0 and server.url == f"http://127.0.0.1:{server.port}"
        assert signal.getsignal(signal.SIGTERM) is handler_before  # runtime owns signals
        async with httpx.AsyncClient(base_url=server.url, timeout=5) as c:
            assert (await c.get("/livez")).json() == {"status": "alive", "ready": None}
            assert (await c.get("/api/health")).status_code == 200
    finally:
        await asyncio.wait_for(server.stop(), 10)
    with pytest.raises(httpx.ConnectError):
        async with httpx.AsyncClient(timeout=2) as c:
            await c.get(f"http://127.0.0.1:{server.port}/livez")
    await server.stop()  # idempotent


async def test_taken_port_is_a_clear_oserror() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        server = ApiServer(create_app(make_view()), "127.0.0.1", port)
        with pytest.raises(OSError, match=f"cannot listen on 127.0.0.1:{port}"):
            await server.start()
