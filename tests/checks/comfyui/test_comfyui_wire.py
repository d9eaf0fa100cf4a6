"""ComfyUI over Guardian's own HTTP client (``http://``) and over httpx (``https://``).

A raw asyncio server on 127.0.0.1 plays ComfyUI byte for byte, so keep-alive, framing and
hostile answers (garbage, drips, resets, huge or chunked bodies) are what the wire sees.
"""

from __future__ import annotations

import asyncio
import base64
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from guardian.checks.base import CheckContext
from guardian.checks.comfyui.client import ComfyUIClient as _Api
from guardian.checks.comfyui.health import ComfyUICheck, ComfyUICheckConfig
from guardian.core.clock import SystemClock
from guardian.core.result import Status
from guardian.demo.comfyui.server import ComfyUISim
from rawhttp import RawServer, read_message  # type: ignore[import-not-found]

pytestmark = pytest.mark.timeout(30)

STATS = {"system": {"comfyui_version": "0.3.64", "ram_total": 8 << 30, "ram_free": 4 << 30},
         "devices": [{"name": "cuda:0", "type": "cuda", "vram_total": 8 << 30,
                      "vram_free": 6 << 30}]}
IDLE = {"queue_running": [], "queue_pending": []}


def reply(body: bytes, status: str = "200 OK", extra: str = "") -> bytes:
    return (f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n{extra}\r\n").encode() + body


def ok(doc: Any) -> bytes:
    return reply(json.dumps(doc).encode())


Seen = tuple[str, str, dict[str, str], bytes]  # method, target, headers, body
Answer = Callable[[Seen], Awaitable[bytes | None]]  # None: hang up without a word


class Comfy(RawServer):
    """Speaks just enough HTTP/1.1 to be ComfyUI: one answer per request, kept alive."""

    def __init__(self) -> None:
        super().__init__(self._converse)
        self.answers: dict[str, Answer] = {}
        self.seen: list[Seen] = []
        self.closed = asyncio.Event()  # a client closed its connection

    def answer(self, path: str, raw: bytes | Answer) -> None:
        async def fixed(_: Seen) -> bytes:
            assert isinstance(raw, bytes)
            return raw

        self.answers[path] = fixed if isinstance(raw, bytes) else raw

    async def _route(self, seen: Seen) -> bytes | None:
        path = seen[1].split("?", 1)[0]
        if path in self.answers:
            return await self.answers[path](seen)
        return {"/system_stats": ok(STATS), "/queue": ok(IDLE),
                "/history": ok({})}.get(path, reply(b"404: Not Found", "404 Not Found"))

    async def _converse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                line, headers, body = await read_message(reader)
            except ConnectionError:
                self.closed.set()
                return
            method, target, _ = line.split(" ")
            seen = (method, target, headers, body)
            self.seen.append(seen)
            answer = await self._route(seen)
            if answer is None:
                writer.transport.abort()
                return
            writer.write(answer)
            await writer.drain()

    def paths(self) -> list[str]:
        return [f"{m} {t}" for m, t, _, _ in self.seen]


@pytest.fixture
async def comfy_raw() -> AsyncIterator[Comfy]:
    async with Comfy() as server:
        yield server


@pytest.fixture
async def make() -> AsyncIterator[Callable[..., ComfyUICheck]]:
    made: list[ComfyUICheck] = []

    def _make(url: str, **cfg: Any) -> ComfyUICheck:
        check = ComfyUICheck(ComfyUICheckConfig(url=url, **cfg),
                             CheckContext("comfyui", SystemClock()))
        made.append(check)
        return check

    yield _make
    for check in made:
        await check.aclose()


async def test_runs_share_one_connection(comfy_raw: Comfy, make: Any) -> None:
    check = make(comfy_raw.url)
    for _ in range(3):
        out = await check.run()
        assert out.status is Status.OK, out.reason
    assert comfy_raw.connections == 1
    assert comfy_raw.paths()[:3] == [
        "GET /system_stats", "GET /queue", "GET /history?max_items=1"
    ]
    assert len(comfy_raw.seen) == 9
    headers = comfy_raw.seen[0][2]
    assert headers["host"] == f"127.0.0.1:{comfy_raw.port}" and "content-length" not in headers


async def test_a_failure_closes_the_connection_and_the_next_run_connects_afresh(
    comfy_raw: Comfy, make: Any
) -> None:
    comfy_raw.answer("/queue", b"garbage\r\n\r\n")
    check = make(comfy_raw.url)
    out = await check.run()
    assert out.status is Status.FAILED and out.values["online"] is False
    assert out.reason.startswith("GET /queue failed: invalid HTTP response"), out.reason
    comfy_raw.answers.clear()
    assert (await check.run()).status is Status.OK
    assert comfy_raw.connections == 2


async def test_a_500_is_a_complete_answer_and_keeps_the_connection(
    comfy_raw: Comfy, make: Any
) -> None:
    comfy_raw.answer("/system_stats", reply(b"500 Internal Server Error", "500 Oops"))
    check = make(comfy_raw.url)
    out = await check.run()
    assert out.reason == "GET /system_stats returned HTTP 500: 500 Internal Server Error"
    comfy_raw.answers.clear()
    assert (await check.run()).status is Status.OK
    assert comfy_raw.connections == 1


async def test_a_slow_drip_fails_within_the_timeout(comfy_raw: Comfy, make: Any) -> None:
    """One byte every 50 ms never trips a per-read timeout; the request's deadline ends it."""
    body = json.dumps(STATS).encode()

    async def drip(_: Seen) -> bytes:
        writer = next(iter(comfy_raw.writers))
        writer.write(reply(body)[: -len(body)])
        for byte in body:
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(0.05)
        return b""

    comfy_raw.answer("/system_stats", drip)
    check = make(comfy_raw.url, timeout=0.3)
    out = await asyncio.wait_for(check.run(), 5)
    assert out.reason == f"no answer from {comfy_raw.url}/system_stats within 0.3s (ReadTimeout)"
    comfy_raw.answers.clear()
    assert (await check.run()).status is Status.OK  # a fresh connection, not the dripping one
    assert comfy_raw.connections == 2


@pytest.mark.parametrize(("raw", "reason"), [
    (reply(b"").replace(b"Content-Length: 0", b"Content-Length: 99999999"),
     "/system_stats: response body larger than 1000 bytes (stopped reading)"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
     + (b"100\r\n" + b"x" * 256 + b"\r\n") * 5,  # 1280 bytes and no end in sight
     "/system_stats: response body larger than 1000 bytes (stopped reading)"),
    (reply(b"<html>not json</html>"), "/system_stats: invalid JSON"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n{\"sys", "GET /system_stats failed: "),
])
async def test_hostile_answers_are_a_failed_check(
    comfy_raw: Comfy, make: Any, raw: bytes, reason: str
) -> None:
    async def then_close(_: Seen) -> bytes | None:
        writer = next(iter(comfy_raw.writers))
        writer.write(raw)
        await writer.drain()
        return None  # and hang up

    comfy_raw.answer("/system_stats", then_close)
    out = await asyncio.wait_for(make(comfy_raw.url, max_body_bytes=1000).run(), 5)
    assert out.status is Status.FAILED and out.values["online"] is False
    assert out.reason.startswith(reason), out.reason
    assert not out.reason.startswith("cannot connect")


async def test_chunked_answers_are_read(comfy_raw: Comfy, make: Any) -> None:
    body = json.dumps(STATS).encode()
    half = len(body) // 2
    chunked = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
               b"Transfer-Encoding: chunked\r\n\r\n"
               + f"{half:x}\r\n".encode() + body[:half] + b"\r\n"
               + f"{len(body) - half:x}\r\n".encode() + body[half:] + b"\r\n0\r\n\r\n")
    comfy_raw.answer("/system_stats", chunked)
    check = make(comfy_raw.url)
    for _ in range(2):
        out = await check.run()
        assert out.status is Status.OK and out.values["comfyui_version"] == "0.3.64"
    assert comfy_raw.connections == 1


async def test_ladder_posts_json_over_the_kept_connection(comfy_raw: Comfy) -> None:
    """What remediation sends: GET /queue, then POST /free with its JSON, one connection."""
    comfy_raw.answer("/free", reply(b""))
    api = _Api(comfy_raw.url, 2, 1000)
    try:
        assert await api.get_json("/queue") == IDLE
        status, body = await api.request(
            "POST", "/free", {"unload_models": True, "free_memory": True}
        )
        assert (status, body) == (200, b"")
        status, _ = await api.request("POST", "/interrupt", {})
        assert status == 404
    finally:
        await api.aclose()
    method, target, headers, sent = comfy_raw.seen[1]
    assert (method, target) == ("POST", "/free")
    assert json.loads(sent) == {"unload_models": True, "free_memory": True}
    assert headers["content-type"] == "application/json"
    assert headers["content-length"] == str(len(sent))
    assert comfy_raw.seen[2][3] == b"{}"
    assert comfy_raw.connections == 1


async def test_a_url_path_prefix_and_credentials_are_kept(comfy_raw: Comfy) -> None:
    """A ComfyUI behind a path-routing proxy with basic auth, as httpx's base_url had it."""
    api = _Api(f"http://us%40er:p%3Ass@127.0.0.1:{comfy_raw.port}/comfy/", 2, 1000)
    try:
        await api.request("GET", "/queue")
    finally:
        await api.aclose()
    _, target, headers, _ = comfy_raw.seen[0]
    assert target == "/comfy/queue"
    assert headers["authorization"] == "Basic " + base64.b64encode(b"us@er:p:ss").decode()


async def test_aclose_closes_the_connection(comfy_raw: Comfy, make: Any) -> None:
    check = make(comfy_raw.url)
    assert (await check.run()).status is Status.OK
    assert not comfy_raw.closed.is_set()
    await check.aclose()
    await asyncio.wait_for(comfy_raw.closed.wait(), 5)


async def test_http_goes_over_the_wire_and_https_over_httpx() -> None:
    wire, tls = _Api("http://127.0.0.1:8188", 1, 10), _Api("https://127.0.0.1:8188", 1, 10)
    try:
        assert wire.wire is not None and wire.tls is None
        assert tls.wire is None and tls.tls is not None
    finally:
        await wire.aclose()
        await tls.aclose()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("scheme", ["http", "https"])
async def test_connection_refused_reads_the_same_on_both_paths(make: Any, scheme: str) -> None:
    url = f"{scheme}://127.0.0.1:{closed_port()}"
    out = await make(url).run()
    assert out.status is Status.FAILED
    assert out.reason == f"cannot connect to {url}: connection refused"


async def test_the_simulator_over_the_wire(make: Any) -> None:
    """The real simulator (ThreadingHTTPServer, HTTP/1.1): healthy, then busy, kept alive."""
    sim = ComfyUISim(device="cuda", exec_time=0.02).start()
    try:
        check = make(sim.url)
        out = await check.run()
        assert out.reason == "ComfyUI 0.3.64: 0 running, 0 pending"
        api = check.api
        assert api.wire is not None
        for _ in range(3):
            assert (await check.run()).status is Status.OK
        assert api.wire.connects == 1
    finally:
        sim.stop()
