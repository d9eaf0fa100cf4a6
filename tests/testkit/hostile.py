"""Hostile HTTP endpoints, each a real server on its own 127.0.0.1 port.

Run as a script (its own process, so its CPU and memory are not counted as Guardian's):
it prints one JSON line ``{"hang": port, ...}`` and serves until killed. Every endpoint
misbehaves in one classic way a health check must survive:

* ``hang``: reads the request, never answers.
* ``endless``: 200 JSON with a chunked body that never ends, as fast as it can write.
* ``garbage_json``: 200 ``application/json`` whose body is not JSON.
* ``slowloris``: a status line, then one header byte every 0.2 s, forever.
* ``redirect``: 302 to itself, forever.
* ``reset``: accepts, then resets the connection (RST, SO_LINGER 0).
* ``normal``: 200 ``{"status":"healthy"}``, the well-behaved control.

Every handler is bounded (a few minutes at most) so a forgotten server cannot spin forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import struct
import sys

MAX_SECONDS = 300


async def _read_head(reader: asyncio.StreamReader) -> bytes:
    try:
        return await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
        return b""


async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await _read_head(reader)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(reader.read(), MAX_SECONDS)  # until the client gives up


async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await _read_head(reader)
    writer.write(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    chunk = b"%x\r\n%s\r\n" % (65536, b"[" * 65536)
    loop = asyncio.get_running_loop()
    end = loop.time() + MAX_SECONDS
    while loop.time() < end:
        writer.write(chunk)
        await writer.drain()


async def garbage_json(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await _read_head(reader)
    body = b'{"status": "healthy", "queue": [1, 2,, \x00\xff'
    writer.write(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
        b"Connection: close\r\n\r\n%s" % (len(body), body)
    )
    await writer.drain()


async def slowloris(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await _read_head(reader)
    writer.write(b"HTTP/1.1 200 OK\r\n")
    for _ in range(int(MAX_SECONDS / 0.2)):
        writer.write(b"X")
        await writer.drain()
        await asyncio.sleep(0.2)


def redirect_to(port: int) -> object:
    async def redirect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_head(reader)
        writer.write(
            b"HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:%d/\r\n"
            b"Content-Length: 0\r\nConnection: close\r\n\r\n" % port
        )
        await writer.drain()

    return redirect


async def reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await _read_head(reader)
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def normal(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    body = b'{"status":"healthy"}'
    while await _read_head(reader):
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
            % (len(body), body)
        )
        await writer.drain()


HANDLERS = {
    "hang": hang,
    "endless": endless,
    "garbage_json": garbage_json,
    "slowloris": slowloris,
    "reset": reset,
    "normal": normal,
}


def _guard(handler):  # type: ignore[no-untyped-def]
    async def run(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await handler(reader, writer)
        except (ConnectionError, OSError, asyncio.CancelledError):
            pass
        finally:
            if not writer.is_closing():
                writer.close()

    return run


async def serve() -> None:
    ports: dict[str, int] = {}
    servers = []
    for name, handler in HANDLERS.items():
        srv = await asyncio.start_server(_guard(handler), "127.0.0.1", 0)
        servers.append(srv)
        ports[name] = srv.sockets[0].getsockname()[1]
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    srv = await asyncio.start_server(_guard(redirect_to(port)), sock=sock)
    servers.append(srv)
    ports["redirect"] = port
    print(json.dumps(ports), flush=True)
    await asyncio.sleep(MAX_SECONDS * 2)


if __name__ == "__main__":
    asyncio.run(serve())
    sys.exit(0)
