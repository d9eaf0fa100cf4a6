"""A raw asyncio HTTP/1.1 server for tests: each connection to a handler, bytes as sent.

Shared by the check tests (hostile modes, keep-alive) and the ComfyUI wire tests, so
framing, resets and drips are what the client's socket really sees.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

RawHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class RawServer:
    """An asyncio TCP server that hands each connection to ``handler``.

    Handler tasks are tracked and cancelled on close, so endless senders stop with the test.
    """

    def __init__(self, handler: RawHandler, ssl_context: Any = None) -> None:
        self._handler = handler
        self._ssl = ssl_context
        self._tasks: set[asyncio.Task[None]] = set()
        self.writers: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None
        self.port = 0
        self.connections = 0

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.writers.add(writer)
        self.connections += 1
        try:
            await self._handler(reader, writer)
        except (ConnectionError, asyncio.CancelledError, OSError):
            pass
        finally:
            self._tasks.discard(task)
            self.writers.discard(writer)
            writer.transport.abort()

    async def __aenter__(self) -> RawServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self._ssl)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        for writer in list(self.writers):
            writer.transport.abort()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=2)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._server.wait_closed(), 2)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


async def read_request(reader: asyncio.StreamReader) -> bytes:
    """One request head; ConnectionError when the client closed instead."""
    try:
        return await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        raise ConnectionError("client closed") from None


async def read_message(reader: asyncio.StreamReader) -> tuple[str, dict[str, str], bytes]:
    """One request: its request line, lower-cased headers and the body its length declares."""
    head = (await read_request(reader)).decode("latin-1")
    line, *fields = head.split("\r\n")
    headers = {}
    for field in fields:
        if field:
            name, _, value = field.partition(":")
            headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    body = await reader.readexactly(length) if length else b""
    return line, headers, body
