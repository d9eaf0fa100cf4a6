"""HTTP check against real local servers, including hostile ones."""

from __future__ import annotations

import asyncio
import gc
import shutil
import socket
import ssl
import struct
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import psutil
import pytest
from pydantic import ValidationError

from guardian.checks.http.check import HttpCheckConfig, JsonCondition, create, evaluate_condition
from guardian.core.result import Outcome, Status

RunHttp = Callable[..., Awaitable[Outcome]]


def head(status: int = 200, headers: dict[str, str] | None = None) -> bytes:
    lines = [f"HTTP/1.1 {status} X"] + [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def read_head(reader: asyncio.StreamReader) -> None:
    await reader.readuntil(b"\r\n\r\n")


@pytest.fixture
def run_http(ctx: Any, closer: Any) -> RunHttp:
    async def run(url: str, **fields: Any) -> Outcome:
        check = closer(create(HttpCheckConfig(url=url, **fields), ctx))
        return await check.run()  # type: ignore[no-any-return]

    return run


# --- normal endpoints (stdlib http.server) -------------------------------------------


async def test_plain_200_is_ok_with_values(http_server: Any, run_http: RunHttp) -> None:
    out = await run_http(http_server.url("/"))
    assert out.status is Status.OK
    assert out.values["status_code"] == 200
    assert out.values["body_bytes"] == 2
    assert isinstance(out.values["response_ms"], float)


async def test_status_codes(http_server: Any, run_http: RunHttp, route: Any) -> None:
    http_server.routes["/down"] = route(503, "maintenance")
    http_server.routes["/nocontent"] = route(204, b"")
    out = await run_http(http_server.url("/down"))
    assert (out.status, out.reason) == (Status.FAILED, "HTTP 503")
    assert out.values["status_code"] == 503
    assert (await run_http(http_server.url("/nocontent"))).status is Status.OK
    strict = await run_http(http_server.url("/"), expect_status=[204])
    assert (strict.status, strict.reason) == (Status.FAILED, "HTTP 200")
    accepted = await run_http(http_server.url("/down"), expect_status=[503])
    assert accepted.status is Status.OK


@pytest.mark.parametrize(
    ("body", "status", "reason"),
    [
        ({"status": "healthy"}, Status.OK, "HTTP 200"),
        ({"status": "HEALTHY "}, Status.OK, "HTTP 200"),
        ({"status": "ok"}, Status.FAILED, 'status "ok"'),  # the plan's contract is strict
        ({"status": "warn"}, Status.FAILED, 'status "warn"'),
        ({"status": "degraded"}, Status.DEGRADED, 'status "degraded"'),
        ({"status": "unhealthy"}, Status.FAILED, 'status "unhealthy"'),
        ({"status": "exploded"}, Status.FAILED, 'status "exploded"'),
        ({"overall": "degraded", "x": 1}, Status.DEGRADED, 'overall "degraded"'),
        ({"overall": "unhealthy"}, Status.FAILED, 'overall "unhealthy"'),
        ({"status": 500}, Status.FAILED, "status 500"),
        ({"status": {"state": "healthy"}}, Status.FAILED, 'status {"state": "healthy"}'),
        ({"status": ["healthy"]}, Status.FAILED, 'status ["healthy"]'),
        ({"uptime": 12}, Status.OK, "HTTP 200"),  # JSON without the field: says nothing
        (["healthy"], Status.OK, "HTTP 200"),  # a list at the top: no field either
        ('"unhealthy"', Status.OK, "HTTP 200"),  # a JSON string has no field either
        ("unhealthy", Status.OK, "HTTP 200"),  # plain text: a plain health endpoint
    ],
)
async def test_json_status_semantics(
    http_server: Any, run_http: RunHttp, route: Any, body: Any, status: Status, reason: str
) -> None:
    http_server.routes["/health"] = route(200, body)
    out = await run_http(http_server.url("/health"))
    assert (out.status, out.reason) == (status, reason)


async def test_json_status_off_ignores_the_field(
    http_server: Any, run_http: RunHttp, route: Any
) -> None:
    http_server.routes["/h"] = route(200, {"status": "unhealthy"})
    assert (await run_http(http_server.url("/h"), json_status=False)).status is Status.OK


async def test_invalid_json(http_server: Any, run_http: RunHttp, route: Any) -> None:
    bad = b'{"status": "healthy"'
    http_server.routes["/claims-json"] = route(200, bad, {"Content-Type": "application/json"})
    http_server.routes["/plain"] = route(200, b"OK all good", {"Content-Type": "text/plain"})
    http_server.routes["/nan"] = route(200, b'{"v": NaN}', {"Content-Type": "application/json"})
    out = await run_http(http_server.url("/claims-json"))
    assert out.status is Status.FAILED
    assert out.reason.startswith("invalid JSON body:")
    # a plain-text health endpoint is fine while nothing needs JSON ...
    assert (await run_http(http_server.url("/plain"))).status is Status.OK
    # ... but not when a condition needs a value from it
    needs = await run_http(
        http_server.url("/plain"), conditions=[{"path": "status", "op": "exists"}]
    )
    assert needs.status is Status.FAILED
    assert needs.reason.startswith("invalid JSON body:")
    nan = await run_http(http_server.url("/nan"))
    assert (nan.status, nan.reason) == (Status.FAILED, "invalid JSON body: NaN is not valid JSON")


PANEL_HEALTH = {
    "status": "healthy",
    "services": {
        "OrchestratorComfyUI": {"running": True, "pid": 4242},
        "OrchestratorPanel": {"running": True},
    },
    "gpus": [{"name": "NVIDIA GeForce RTX 4090", "vram_free_mb": 20000}],
    "tags": ["prod", "gpu"],
}


async def test_conditions_on_real_body(http_server: Any, run_http: RunHttp, route: Any) -> None:
    http_server.routes["/api/health"] = route(200, PANEL_HEALTH)
    url = http_server.url("/api/health")
    good = await run_http(
        url,
        conditions=[
            {"path": "services.OrchestratorComfyUI.running", "value": True},
            {"path": "gpus.0.vram_free_mb", "op": ">=", "value": 4096},
            {"path": "tags", "op": "contains", "value": "gpu"},
        ],
    )
    assert good.status is Status.OK, good.reason
    bad = await run_http(
        url, conditions=[{"path": "gpus.0.vram_free_mb", "op": ">", "value": 30000}]
    )
    assert bad.status is Status.FAILED
    assert bad.reason == "condition failed: gpus.0.vram_free_mb > 30000: got 20000"
    shape = await run_http(url, conditions=[{"path": "status.code", "op": "==", "value": 1}])
    assert shape.status is Status.FAILED
    assert "status is a string, not an object or list" in shape.reason


async def test_condition_on_wrong_shape_body(
    http_server: Any, run_http: RunHttp, route: Any
) -> None:
    http_server.routes["/list"] = route(200, [1, 2, 3])
    http_server.routes["/str"] = route(200, '"just a string"')
    cond = [{"path": "services.OrchestratorComfyUI.running", "value": True}]
    out = await run_http(http_server.url("/list"), conditions=cond)
    assert out.status is Status.FAILED
    assert "the top is a list, 'services' is not an index" in out.reason
    out = await run_http(http_server.url("/str"), conditions=cond)
    assert out.status is Status.FAILED
    assert "the top is a string" in out.reason


DOC = {"a": {"b": [10, {"c": "yes"}], "t": True, "n": None, "s": "hello", "num": 5}}


@pytest.mark.parametrize(
    ("path", "op", "value", "holds"),
    [
        ("a.b.0", "==", 10, True),
        ("a.b.1.c", "==", "yes", True),
        ("a.b.-1.c", "==", "yes", True),
        ("a.t", "==", True, True),
        ("a.t", "==", 1, False),  # JSON true is not 1
        ("a.num", "==", True, False),
        ("a.num", "!=", 6, True),
        ("a.n", "==", None, True),
        ("a.n", "exists", None, True),
        ("a.zz", "exists", None, False),
        ("a.zz", "exists", False, True),
        ("a.s", "exists", False, False),
        ("a.s", "contains", "ell", True),
        ("a.s", "contains", "xyz", False),
        ("a.b", "contains", 10, True),
        ("a", "contains", "num", True),
        ("a.num", "contains", 5, False),  # a number cannot be searched
        ("a.num", "<", 6, True),
        ("a.num", "<=", 5, True),
        ("a.num", ">", 5, False),
        ("a.num", ">=", 5.0, True),
        ("a.s", "<", 10, False),  # strings never compare as numbers
        ("a.t", ">", 0, False),  # nor do booleans
        ("a.b.5", "==", 1, False),  # out of range
        ("a.b.x", "==", 1, False),  # not an index
    ],
)
def test_condition_operators(path: str, op: str, value: Any, holds: bool) -> None:
    why = evaluate_condition(DOC, JsonCondition(path=path, op=op, value=value))  # type: ignore[arg-type]
    assert (why is None) == holds, why


async def test_body_contains(http_server: Any, run_http: RunHttp, route: Any) -> None:
    http_server.routes["/p"] = route(200, "ComfyUI is running")
    assert (await run_http(http_server.url("/p"), body_contains="running")).status is Status.OK
    out = await run_http(http_server.url("/p"), body_contains="stopped")
    assert (out.status, out.reason) == (Status.FAILED, "body does not contain 'stopped'")


async def test_slow_response_degrades(http_server: Any, run_http: RunHttp, route: Any) -> None:
    http_server.routes["/slow"] = route(200, {"status": "healthy"}, delay=0.3)
    out = await run_http(http_server.url("/slow"), max_response_ms=50)
    assert out.status is Status.DEGRADED
    assert out.reason.startswith("slow: ")
    assert float(out.values["response_ms"]) >= 300  # type: ignore[arg-type]
    assert (await run_http(http_server.url("/slow"), max_response_ms=5000)).status is Status.OK


async def test_head(http_server: Any, run_http: RunHttp, route: Any) -> None:
    http_server.routes["/h"] = route(200, {"status": "unhealthy"})
    out = await run_http(http_server.url("/h"), method="HEAD")
    assert out.status is Status.OK  # no body, so nothing declares ill health
    assert out.values["body_bytes"] == 0
    with pytest.raises(ValidationError, match="HEAD returns no body"):
        HttpCheckConfig(url="http://x/", method="HEAD", body_contains="x")


async def test_redirect_followed(http_server: Any, run_http: RunHttp, route: Any) -> None:
    http_server.routes["/old"] = route(302, b"", {"Location": "/new"})
    http_server.routes["/new"] = route(200, {"status": "healthy"})
    assert (await run_http(http_server.url("/old"))).status is Status.OK
    kept = await run_http(http_server.url("/old"), follow_redirects=False)
    assert (kept.status, kept.reason) == (Status.FAILED, "HTTP 302")


# --- hostile servers ---------------------------------------------------------------


async def test_connection_refused(run_http: RunHttp) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = await run_http(f"http://127.0.0.1:{port}/health")
    assert (out.status, out.reason) == (Status.FAILED, "connection refused")


async def test_dns_failure(run_http: RunHttp) -> None:
    out = await run_http("http://guardian-test.invalid/health", timeout=5)
    assert out.status is Status.FAILED
    assert out.reason.startswith("DNS lookup failed for guardian-test.invalid"), out.reason


async def test_connect_and_read_timeout(raw_server: Any, run_http: RunHttp) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(3600)

    async with raw_server(silent) as srv:
        t0 = time.monotonic()
        out = await run_http(srv.url + "/", timeout=0.6)
        elapsed = time.monotonic() - t0
    assert out.status is Status.FAILED
    assert "timed out" in out.reason
    assert elapsed < 1.5


@pytest.mark.slow
async def test_slow_drip_stops_at_deadline(raw_server: Any, run_http: RunHttp) -> None:
    async def drip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(head(200, {"Content-Type": "application/json", "Content-Length": "999"}))
        while True:
            writer.write(b" ")
            await writer.drain()
            await asyncio.sleep(0.5)

    async with raw_server(drip) as srv:
        t0 = time.monotonic()
        out = await run_http(srv.url + "/", timeout=1.5)
        elapsed = time.monotonic() - t0
    assert (out.status, out.reason) == (Status.FAILED, "timed out after 1.5s")
    assert elapsed < 2.0  # the per-read socket timeout alone would never fire


async def test_endless_body_is_capped(raw_server: Any, run_http: RunHttp) -> None:
    async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(head(200, {"Transfer-Encoding": "chunked"}))
        chunk = b"x" * 65536
        frame = b"%x\r\n%s\r\n" % (len(chunk), chunk)
        while True:
            writer.write(frame)
            await writer.drain()

    async with raw_server(endless) as srv:
        out = await run_http(srv.url + "/", max_body_bytes=100_000, timeout=5)
    assert out.status is Status.FAILED
    assert out.reason == "body larger than 100000 bytes (stopped reading)"


async def test_declared_oversize_body_fails_before_reading(
    http_server: Any, run_http: RunHttp, route: Any
) -> None:
    http_server.routes["/big"] = route(200, b"y" * 5000)
    out = await run_http(http_server.url("/big"), max_body_bytes=4096)
    assert (out.status, out.reason) == (
        Status.FAILED,
        "body larger than 4096 bytes (stopped reading)",
    )
    assert (await run_http(http_server.url("/big"), max_body_bytes=5000)).status is Status.OK


async def test_redirect_loop(raw_server: Any, run_http: RunHttp) -> None:
    async def loop(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        # an endless redirect body: must never be read
        writer.write(head(302, {"Location": "/again", "Transfer-Encoding": "chunked"}))
        while True:
            writer.write(b"10000\r\n" + b"r" * 0x10000 + b"\r\n")
            await writer.drain()

    async with raw_server(loop) as srv:
        out = await run_http(srv.url + "/", max_redirects=3, timeout=5)
        connections = srv.connections
    assert (out.status, out.reason) == (Status.FAILED, "too many redirects (more than 3)")
    assert connections == 4


async def test_reset_mid_response(raw_server: Any, run_http: RunHttp) -> None:
    async def reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(head(200, {"Content-Length": "1000"}) + b'{"status": "hea')
        await writer.drain()
        await asyncio.sleep(0.1)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()  # RST, not FIN

    async with raw_server(reset) as srv:
        out = await run_http(srv.url + "/", timeout=5)
    assert out.status is Status.FAILED
    assert out.reason in (
        "connection reset by peer",
        "invalid HTTP response: peer closed connection without sending complete message body "
        "(received 15 bytes, expected 1000)",
    ), out.reason


async def test_garbage_bytes(raw_server: Any, run_http: RunHttp) -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"\x00\xffSSH-2.0-OpenSSH_9.6\r\n\x13\x37 not http at all\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(3600)

    async with raw_server(garbage) as srv:
        out = await run_http(srv.url + "/", timeout=5)
    assert out.status is Status.FAILED
    assert out.reason.startswith("invalid HTTP response:"), out.reason


@pytest.fixture(scope="module")
def self_signed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("no openssl CLI to make a self-signed certificate")
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
         "-out", str(cert), "-days", "2", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return cert, key


async def test_tls_self_signed_rejected(
    raw_server: Any, run_http: RunHttp, self_signed: tuple[Path, Path]
) -> None:
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(*self_signed)

    async def healthy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        body = b'{"status": "healthy"}'
        writer.write(head(200, {"Content-Length": str(len(body))}) + body)
        await writer.drain()

    async with raw_server(healthy, ssl_context=server_ctx) as srv:
        url = f"https://127.0.0.1:{srv.port}/"
        out = await run_http(url, timeout=5)
        assert out.status is Status.FAILED
        assert out.reason.startswith("TLS certificate rejected:"), out.reason
        assert "self-signed" in out.reason or "self signed" in out.reason
        # the same server passes once verification is off: the failure was TLS, nothing else
        assert (await run_http(url, timeout=5, verify_tls=False)).status is Status.OK


async def test_https_to_a_plain_http_server(raw_server: Any, run_http: RunHttp) -> None:
    async def plain(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(100)  # the ClientHello, which it does not understand
        writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()

    async with raw_server(plain) as srv:
        out = await run_http(f"https://127.0.0.1:{srv.port}/", timeout=5)
    assert out.status is Status.FAILED
    assert out.reason.startswith("TLS error:"), out.reason


async def test_memory_flat_against_endless_bodies(raw_server: Any, ctx: Any, closer: Any) -> None:
    async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(head(200, {"Transfer-Encoding": "chunked"}))
        chunk = b"z" * 65536
        frame = b"%x\r\n%s\r\n" % (len(chunk), chunk)
        while True:
            writer.write(frame)
            await writer.drain()

    proc = psutil.Process()
    async with raw_server(endless) as srv:
        check = closer(create(HttpCheckConfig(url=srv.url + "/", timeout=5), ctx))
        out = await check.run()  # warm up imports, SSL contexts, pools
        gc.collect()
        before = proc.memory_info().rss
        for _ in range(30):
            out = await check.run()
            assert out.reason == "body larger than 1048576 bytes (stopped reading)"
        gc.collect()
        growth = proc.memory_info().rss - before
    print(f"RSS growth over 30 capped reads of an endless body: {growth / 1e6:.2f} MB")
    assert growth < 30 * 1024 * 1024
