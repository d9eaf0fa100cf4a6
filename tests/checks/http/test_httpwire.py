"""The plain-http probe path: keep-alive, fresh connections after failures, framing."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from guardian.checks.http.check import HttpCheckConfig, create
from guardian.checks.http.wire import WireClient, WireError
from guardian.core.result import Status
from testkit.rawhttp import read_message, read_request

BODY = b'{"status": "healthy"}'


def answer(body: bytes = BODY, extra: str = "") -> bytes:
    return (
        f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n{extra}\r\n"
    ).encode() + body


def check(url: str, ctx: Any, closer: Any, **fields: Any) -> Any:
    return closer(create(HttpCheckConfig(url=url, **{"timeout": 2, **fields}), ctx))


async def test_keep_alive_reuses_one_connection(raw_server: Any, ctx: Any, closer: Any) -> None:
    requests: list[bytes] = []

    async def keep(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            requests.append(await read_request(reader))
            writer.write(answer())
            await writer.drain()

    async with raw_server(keep) as srv:
        c = check(srv.url + "/health?x=1", ctx, closer, headers={"X-Probe": "1"})
        for _ in range(5):
            out = await c.run()
            assert out.status is Status.OK, out.reason
        assert srv.connections == 1
    first = requests[0].decode()
    assert first.startswith("GET /health?x=1 HTTP/1.1\r\n")
    assert f"Host: 127.0.0.1:{srv.port}\r\n" in first and "X-Probe: 1\r\n" in first


async def test_a_failure_makes_the_next_run_connect_afresh(
    raw_server: Any, ctx: Any, closer: Any
) -> None:
    boom = b"HTTP/1.1 500 Boom\r\nContent-Length: 0\r\n\r\n"
    replies = iter([answer(), boom, b"garbage\r\n\r\n"])

    async def flaky(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(reader)
            writer.write(next(replies, answer()))
            await writer.drain()

    async with raw_server(flaky) as srv:
        c = check(srv.url + "/", ctx, closer)
        assert (await c.run()).status is Status.OK
        out = await c.run()
        # An HTTP 500 is a complete, well-framed answer: the connection may stay.
        assert (out.status, out.reason) == (Status.FAILED, "HTTP 500")
        out = await c.run()
        assert out.status is Status.FAILED and out.reason.startswith("invalid HTTP response")
        assert (await c.run()).status is Status.OK
        assert srv.connections == 2  # a new one only after the broken exchange


async def test_server_idle_timeout_is_noticed_before_reuse(
    raw_server: Any, ctx: Any, closer: Any
) -> None:
    async def one_shot(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(answer())  # says nothing about closing, then closes (idle timeout)
        await writer.drain()
        writer.close()

    async with raw_server(one_shot) as srv:
        c = check(srv.url + "/", ctx, closer)
        for _ in range(3):
            out = await c.run()
            assert out.status is Status.OK, out.reason
            await asyncio.sleep(0.05)
        assert srv.connections == 3


async def test_connection_dropped_before_any_answer_is_retried_once(
    raw_server: Any, ctx: Any, closer: Any
) -> None:
    """The race with a keep-alive timeout: request sent, server closes without a byte."""
    served = 0

    async def racy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal served
        await read_request(reader)
        served += 1
        writer.write(answer())
        await writer.drain()
        await read_request(reader)  # the reuse: dropped unanswered
        writer.transport.abort()

    async with raw_server(racy) as srv:
        c = check(srv.url + "/", ctx, closer)
        assert (await c.run()).status is Status.OK
        await asyncio.sleep(0.01)
        out = await c.run()
        assert out.status is Status.OK, out.reason
        assert served == 2 and srv.connections == 2


async def test_a_broken_answer_is_a_failure_not_retried(
    raw_server: Any, ctx: Any, closer: Any
) -> None:
    async def half(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(answer())
        await writer.drain()
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{")
        await writer.drain()
        writer.close()

    async with raw_server(half) as srv:
        c = check(srv.url + "/", ctx, closer)
        assert (await c.run()).status is Status.OK
        out = await c.run()
        assert out.status is Status.FAILED
        assert out.reason.startswith("invalid HTTP response: peer closed connection"), out.reason
        assert srv.connections == 1


@pytest.mark.parametrize(
    ("reply", "connections"),
    [
        # chunked, kept alive
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
         b"b\r\n{\"status\": \r\na\r\n\"healthy\"}\r\n0\r\n\r\n", 1),
        # Connection: close honoured
        (answer(extra="Connection: close\r\n"), 3),
        # HTTP/1.0 without a length: the body ends with the connection
        (b"HTTP/1.0 200 OK\r\n\r\n" + BODY, 3),
    ],
    ids=["chunked", "connection-close", "close-delimited"],
)
async def test_framing(
    raw_server: Any, ctx: Any, closer: Any, reply: bytes, connections: int
) -> None:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head = await read_request(reader)
            writer.write(reply)
            await writer.drain()
            if b"Connection: close" in reply or reply.startswith(b"HTTP/1.0"):
                writer.close()
                return
            assert head

    async with raw_server(serve) as srv:
        c = check(srv.url + "/", ctx, closer)
        for _ in range(3):
            out = await c.run()
            assert out.status is Status.OK, out.reason
            assert out.values["body_bytes"] == len(BODY)
            await asyncio.sleep(0.02)
        assert srv.connections == connections


async def test_head_does_not_wait_for_a_body(raw_server: Any, ctx: Any, closer: Any) -> None:
    async def head_ok(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n")
            await writer.drain()

    async with raw_server(head_ok) as srv:
        c = check(srv.url + "/", ctx, closer, method="HEAD")
        assert (await c.run()).status is Status.OK
        assert (await c.run()).status is Status.OK


def test_header_injection_is_refused() -> None:
    with pytest.raises(WireError, match="line break"):
        WireClient({"X-Evil": "a\r\nHost: elsewhere"})


async def test_request_target_with_line_break_is_refused() -> None:
    client = WireClient()
    with pytest.raises(WireError, match="line break"):
        await client.request(
            "GET", "127.0.0.1", 9, "/\r\nX: y", limit=10, connect_timeout=0.5
        )
    await client.aclose()


def test_config_refuses_multi_line_headers() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="line break"):
        HttpCheckConfig(url="http://127.0.0.1/", headers={"X": "a\nb"})


# ------------------------------------------------------------------ bodies (ComfyUI's POSTs)


def addr(srv: Any) -> tuple[str, int]:
    return "127.0.0.1", srv.port


async def test_post_sends_its_body_with_length_and_type(raw_server: Any) -> None:
    seen: list[tuple[str, dict[str, str], bytes]] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            seen.append(await read_message(reader))
            writer.write(answer(b"{}"))
            await writer.drain()

    client = WireClient()
    body = b'{"unload_models":true,"free_memory":true}'
    try:
        async with raw_server(serve) as srv:
            r = await client.request("POST", *addr(srv), "/free", limit=100,
                                     connect_timeout=2, body=body,
                                     content_type="application/json")
            assert (r.status, r.body) == (200, b"{}")
            await client.request("POST", *addr(srv), "/interrupt", limit=100,
                                 connect_timeout=2)
            await client.request("GET", *addr(srv), "/queue", limit=100, connect_timeout=2)
    finally:
        await client.aclose()
    (line, headers, got), (line2, headers2, got2), (line3, headers3, _) = seen
    assert line == "POST /free HTTP/1.1" and got == body
    assert headers["content-length"] == str(len(body))
    assert headers["content-type"] == "application/json"
    # A POST without a body still declares its (zero) length; a GET declares none.
    assert line2 == "POST /interrupt HTTP/1.1" and got2 == b""
    assert headers2["content-length"] == "0" and "content-type" not in headers2
    assert line3 == "GET /queue HTTP/1.1" and "content-length" not in headers3


async def test_one_connection_carries_gets_and_posts(raw_server: Any) -> None:
    lines: list[str] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            line, _, body = await read_message(reader)
            lines.append(f"{line.split()[0]} {len(body)}")
            writer.write(answer(b'{"n": %d}' % len(lines)))
            await writer.drain()

    client = WireClient()
    try:
        async with raw_server(serve) as srv:
            for i in range(3):
                await client.request("GET", *addr(srv), "/queue", limit=100, connect_timeout=2)
                r = await client.request("POST", *addr(srv), "/prompt", limit=100,
                                         connect_timeout=2, body=b"x" * (i + 1),
                                         content_type="application/json")
                assert r.body == b'{"n": %d}' % (2 * i + 2)
            assert srv.connections == 1 and client.connects == 1
    finally:
        await client.aclose()
    assert lines == ["GET 0", "POST 1", "GET 0", "POST 2", "GET 0", "POST 3"]


async def test_a_post_on_a_dropped_connection_is_not_sent_twice(raw_server: Any) -> None:
    """The keep-alive race retries a GET (see above), never a POST the server may have run."""
    posts = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal posts
        while True:
            line, _, _ = await read_message(reader)
            if line.startswith("POST") and posts == 0:
                posts += 1
                writer.transport.abort()  # acted on it, perhaps, then died unanswered
                return
            posts += line.startswith("POST")
            writer.write(answer())
            await writer.drain()

    client = WireClient()
    try:
        async with raw_server(serve) as srv:
            await client.request("GET", *addr(srv), "/queue", limit=100, connect_timeout=2)
            with pytest.raises(WireError, match="a POST is not sent twice"):
                await client.request("POST", *addr(srv), "/interrupt", limit=100,
                                     connect_timeout=2, body=b"{}")
            assert posts == 1 and srv.connections == 1
            r = await client.request("POST", *addr(srv), "/interrupt", limit=100,
                                     connect_timeout=2, body=b"{}")
            assert r.status == 200 and posts == 2 and srv.connections == 2
    finally:
        await client.aclose()


async def test_connect_failed_tells_a_refused_connect_from_a_broken_exchange(
    raw_server: Any,
) -> None:
    async def reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Le")
        await writer.drain()
        writer.transport.abort()

    client = WireClient()
    try:
        async with raw_server(reset) as srv:
            port = srv.port
            with pytest.raises((OSError, WireError)):
                await client.request("GET", "127.0.0.1", port, "/", limit=100, connect_timeout=2)
            assert client.connect_failed is False and client.connects == 1
        with pytest.raises(ConnectionRefusedError):  # the server is gone: nothing listens
            await client.request("GET", "127.0.0.1", port, "/", limit=100, connect_timeout=2)
        assert client.connect_failed is True and client.connects == 1
    finally:
        await client.aclose()


def test_content_type_injection_is_refused() -> None:
    client = WireClient()
    with pytest.raises(WireError, match="line break"):
        client._head("POST", "h", 80, "/", b"{}", "application/json\r\nX: y")
