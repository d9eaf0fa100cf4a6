"""Real local servers for the check tests: a raw TCP one for hostile modes, a stdlib one."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from guardian.checks.base import CheckContext
from guardian.core.clock import SystemClock
from testkit.rawhttp import RawHandler, RawServer


@pytest.fixture
def raw_server() -> Callable[..., RawServer]:
    def make(handler: RawHandler, ssl_context: Any = None) -> RawServer:
        return RawServer(handler, ssl_context)

    return make


@dataclass
class Route:
    status: int = 200
    body: bytes | str | Any = b"OK"
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


class _Handler(BaseHTTPRequestHandler):
    routes: dict[str, Route]

    def _reply(self, with_body: bool) -> None:
        route = self.routes.get(self.path)
        if route is None:
            route = Route() if self.path == "/" else Route(404, b"not found")
        if route.delay:
            time.sleep(route.delay)
        body = route.body
        if not isinstance(body, bytes | str):
            body = json.dumps(body)
            route.headers.setdefault("Content-Type", "application/json")
        data = body.encode() if isinstance(body, str) else body
        self.send_response(route.status)
        for key, value in route.headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if with_body:
            self.wfile.write(data)

    def do_GET(self) -> None:
        self._reply(True)

    def do_HEAD(self) -> None:
        self._reply(False)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class HttpServer:
    def __init__(self) -> None:
        handler = type("H", (_Handler,), {"routes": {}})
        self.routes: dict[str, Route] = handler.routes  # type: ignore[attr-defined]
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True)

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"


@pytest.fixture
def http_server() -> Iterator[HttpServer]:
    server = HttpServer()
    server._thread.start()
    try:
        yield server
    finally:
        server._httpd.shutdown()
        server._httpd.server_close()


@pytest.fixture
def ctx() -> CheckContext:
    return CheckContext(target="t", clock=SystemClock())


class Closer:
    """Closes every check a test made, even when the test fails."""

    def __init__(self) -> None:
        self.items: list[Any] = []

    def __call__(self, check: Any) -> Any:
        self.items.append(check)
        return check


@pytest.fixture
async def closer() -> AsyncIterator[Closer]:
    c = Closer()
    try:
        yield c
    finally:
        for check in c.items:
            await check.aclose()


@pytest.fixture
def route() -> type[Route]:
    return Route
