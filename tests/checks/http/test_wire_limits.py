"""A hostile target's response head fails its check, in bounded memory (issue 21, 5).

Real servers on 127.0.0.1 that stream headers forever, send thousands of repeated fields,
or a status line of megabytes: each is a failed check with the cap in its reason, never a
timeout (which Guardian's overload rule could excuse) and never a megabyte kept.
"""

from __future__ import annotations

import asyncio
import gc
from typing import Any

import psutil

from guardian.checks.http.check import HttpCheckConfig, create
from guardian.checks.http.wire import MAX_HEAD_BYTES, MAX_HEADERS, WireClient
from guardian.core.result import Status

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


async def _request(reader: asyncio.StreamReader) -> None:
    await reader.readuntil(b"\r\n\r\n")


def flood_headers(streamed: list[int]) -> Any:
    """200, then header lines as fast as the client reads them, forever."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\n")
        line = b"X-Junk: " + b"j" * 1000 + b"\r\n"
        try:
            while True:
                writer.write(line * 64)
                streamed[0] += len(line) * 64
                await writer.drain()
        except (ConnectionError, OSError):
            pass

    return handler


def repeated_fields(n: int) -> Any:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\n" + b"Set-Cookie: a=b\r\n" * n
                     + b"Content-Length: 2\r\n\r\nok")
        await writer.drain()

    return handler


async def long_status(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await _request(reader)
    try:
        writer.write(b"HTTP/1.1 200 " + b"A" * 1_000_000 + b"\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
    except (ConnectionError, OSError):
        pass


def check(url: str, ctx: Any, closer: Any) -> Any:
    return closer(create(HttpCheckConfig(url=url, timeout=10), ctx))


async def test_endless_headers_fail_with_the_cap_after_bounded_bytes(
    raw_server: Any, ctx: Any, closer: Any
) -> None:
    streamed = [0]
    async with raw_server(flood_headers(streamed)) as srv:
        c = check(srv.url + "/", ctx, closer)
        gc.collect()
        rss0 = psutil.Process().memory_info().rss
        for _ in range(5):
            out = await c.run()
            assert out.status is Status.FAILED
            assert out.reason == "response headers over 64 KiB", out.reason
        rss1 = psutil.Process().memory_info().rss
    # The client stopped reading near the cap: the server got to write little more than
    # what fits in the socket buffers, not the ~200 MiB it would have streamed.
    assert streamed[0] < 5 * (MAX_HEAD_BYTES * 2 + 8 * 2**20)
    assert (rss1 - rss0) < 32 * 2**20


async def test_thousands_of_repeated_fields_fail_on_the_count(
    raw_server: Any, ctx: Any, closer: Any
) -> None:
    async with raw_server(repeated_fields(5000)) as srv:
        out = await check(srv.url + "/", ctx, closer).run()
    assert out.status is Status.FAILED
    assert out.reason == f"more than {MAX_HEADERS} response headers"


async def test_repeated_fields_under_the_cap_are_joined_once(raw_server: Any) -> None:
    async with raw_server(repeated_fields(MAX_HEADERS - 1)) as srv:
        wire = WireClient()
        try:
            resp = await wire.request("GET", "127.0.0.1", srv.port, "/", limit=1024,
                                      connect_timeout=2)
        finally:
            await wire.aclose()
    assert resp.status == 200 and resp.body == b"ok"
    assert resp.headers["set-cookie"] == ", ".join(["a=b"] * (MAX_HEADERS - 1))


async def test_megabyte_status_line_fails_on_its_cap(raw_server: Any, ctx: Any,
                                                    closer: Any) -> None:
    async with raw_server(long_status) as srv:
        out = await check(srv.url + "/", ctx, closer).run()
    assert out.status is Status.FAILED
    assert out.reason in ("status line over 8 KiB", "response headers over 64 KiB"), out.reason


async def test_a_normal_answer_still_passes(raw_server: Any, ctx: Any, closer: Any) -> None:
    async def normal(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _request(reader)
        writer.write(OK)
        await writer.drain()

    async with raw_server(normal) as srv:
        out = await check(srv.url + "/", ctx, closer).run()
    assert out.status is Status.OK, out.reason
