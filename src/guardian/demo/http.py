"""The small threaded HTTP base both simulators share: routing, replies, fault switches, CLI.

Standard library only, so a simulator starts in milliseconds, needs nothing installed and
behaves the same in a test thread and in a child process. Faults are the point of a
simulator: every app answers ``GET/POST /__sim/fault`` (a control plane that faults never
touch) and applies the active fault to every other request before routing it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from io import BufferedIOBase
from typing import Any, ClassVar, Self, TextIO
from urllib.parse import parse_qs, urlsplit

INTERNAL_ERROR_BODY = "500 Internal Server Error\n\nServer got itself in trouble"
MAX_REQUEST_BYTES = 16 * 1024 * 1024
CONTROL_PREFIX = "/__sim/"
COMMON_FAULTS = frozenset({"none", "crash", "hang", "slow", "error500"})
FAULT_PARAMS = ("delay", "crash_after", "leak_mb")


@dataclass
class Fault:
    """The active fault and its parameters (each parameter matters only for its mode)."""

    mode: str = "none"
    delay: float = 5.0  # slow: seconds added to every response
    crash_after: float = 0.0  # crash: seconds until the process dies
    leak_mb: float = 512.0  # vram_leak: MB lost per /system_stats call

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)

    def param(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[0] if values else None


Takeover = Callable[[BufferedIOBase, BufferedIOBase], None]


@dataclass
class Reply:
    status: int
    body: bytes = b""
    content_type: str = "application/json; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)
    # A protocol switch (101, a websocket): after the headers the connection is handed to
    # this callable (reading, writing), which keeps it until it returns.
    takeover: Takeover | None = None


def json_reply(obj: Any, status: int = 200) -> Reply:
    return Reply(status, json.dumps(obj).encode())


def text_reply(text: str, status: int = 200) -> Reply:
    return Reply(status, text.encode(), "text/plain; charset=utf-8")


def internal_error() -> Reply:
    """What aiohttp answers when a handler raises: plain text, not JSON."""
    return text_reply(INTERNAL_ERROR_BODY, 500)


def not_found() -> Reply:
    return text_reply("404: Not Found", 404)


class BadRequest(Exception):
    """A body the app cannot read; turned into a 500 like an unhandled aiohttp exception."""


def parse_json_body(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError as exc:  # also UnicodeDecodeError
        raise BadRequest(str(exc)) from exc


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # hung handlers must not block stop()

    def __init__(self, app: SimApp, address: tuple[str, int]) -> None:
        self.app = app
        self.connections: set[socket.socket] = set()
        self.conn_lock = threading.Lock()
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.conn_lock:
            self.connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.conn_lock:
            self.connections.discard(request)
        super().shutdown_request(request)

    def drop_connections(self) -> None:
        """Reset every open connection, as a dying process would."""
        with self.conn_lock:
            conns = list(self.connections)
            self.connections.clear()
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes: without TCP_NODELAY, Nagle and the client's
    # delayed ACK hold every kept-alive answer ~40 ms, which aiohttp (ComfyUI) and Node
    # (the panel), both setting TCP_NODELAY, never do.
    disable_nagle_algorithm = True

    def version_string(self) -> str:
        return "Python/3.11 aiohttp/3.12.15"

    def _handle(self, *, head: bool = False) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_REQUEST_BYTES:
            self._send(text_reply("413: Request Entity Too Large", 413))
            return
        body = self.rfile.read(length) if length > 0 else b""
        parts = urlsplit(self.path)
        request = Request(
            self.command, parts.path, parse_qs(parts.query), body, dict(self.headers.items())
        )
        reply = self.server.app.dispatch(request)
        if reply is None:  # hung: leave without a word
            self.close_connection = True
            return
        self._send(reply, head=head)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _handle

    def do_HEAD(self) -> None:
        """aiohttp (ComfyUI) and Next.js answer HEAD on every GET route: the GET's status
        and headers, without the body."""
        self.command = "GET"
        self._handle(head=True)

    def _send(self, reply: Reply, *, head: bool = False) -> None:
        if reply.takeover is not None:
            self._switch(reply, reply.takeover)
            return
        try:
            self.send_response(reply.status)
            self.send_header("Content-Type", reply.content_type)
            self.send_header("Content-Length", str(len(reply.body)))
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.end_headers()
            if not head:
                self.wfile.write(reply.body)
        except OSError:
            self.close_connection = True

    def _switch(self, reply: Reply, takeover: Takeover) -> None:
        self.close_connection = True
        try:
            self.send_response(reply.status)
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.flush()
        except OSError:
            return
        takeover(self.rfile, self.wfile)

    def log_message(self, format: str, *args: Any) -> None:
        """Real servers don't log every request by default; neither do we."""


class SimApp:
    """Base for a simulated server: lifecycle, faults, control plane, log lines.

    Subclasses set ``name`` and ``fault_modes`` and implement :meth:`route`. In a child
    process (``exit_on_crash=True``) the crash fault kills the process; in-process it closes
    the listening socket and every connection, which clients see the same way.
    """

    name: ClassVar[str] = "sim"
    fault_modes: ClassVar[frozenset[str]] = COMMON_FAULTS
    sigterm_kills: ClassVar[bool] = False  # the real server dies of SIGTERM (no handler)

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        exit_on_crash: bool = False,
        log_stream: TextIO | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.exit_on_crash = exit_on_crash
        self.log_stream = log_stream
        self.log_lines: deque[str] = deque(maxlen=1000)
        self.crashed = False
        self.started_at = time.time()
        self._fault = Fault()
        self.cond = threading.Condition()  # guards the fault and all subclass state
        self._stopping = False
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._crash_timer: threading.Timer | None = None

    # ------------------------------------------------------------------ lifecycle

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> Self:
        self._server = _Server(self, (self.host, self.port))
        self.port = int(self._server.server_address[1])
        self.started_at = time.time()
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), name=f"{self.name}-http",
            daemon=True,
        )
        self._thread.start()
        self.on_start()
        return self

    def stop(self) -> None:
        with self.cond:
            if self._stopping:
                return
            self._stopping = True
            self.cond.notify_all()
        if self._crash_timer is not None:
            self._crash_timer.cancel()
        self.on_stop()
        if self._server is not None:
            self._server.shutdown()
            self._server.drop_connections()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def on_start(self) -> None:
        """Hook: start background workers."""

    def on_stop(self) -> None:
        """Hook: stop background workers (called before the socket closes)."""

    @property
    def stopping(self) -> bool:
        return self._stopping

    # ------------------------------------------------------------------ faults

    @property
    def fault(self) -> Fault:
        return self._fault

    def set_fault(self, mode: str = "none", **params: float) -> Fault:
        """Switch the active fault; unknown modes or parameters raise ValueError."""
        if mode not in self.fault_modes:
            raise ValueError(f"unknown fault mode {mode!r}; one of {sorted(self.fault_modes)}")
        fault = Fault(mode)
        for key, value in params.items():
            if key not in FAULT_PARAMS:
                raise ValueError(f"unknown fault parameter {key!r}")
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ValueError(f"fault parameter {key!r} must be a number >= 0")
            setattr(fault, key, float(value))
        with self.cond:
            self._fault = fault
            self.cond.notify_all()
        if self._crash_timer is not None:
            self._crash_timer.cancel()
            self._crash_timer = None
        self.log(f"[sim] fault set: {json.dumps(fault.to_dict())}")
        self.on_fault(fault)
        if mode == "crash":
            # A short floor so the control request that asked for the crash gets its answer.
            self._crash_timer = threading.Timer(max(fault.crash_after, 0.1), self.crash)
            self._crash_timer.daemon = True
            self._crash_timer.start()
        return fault

    def on_fault(self, fault: Fault) -> None:
        """Hook: react to a fault change."""

    def crash(self) -> None:
        self.log("[sim] crash fault: exiting with status 1")
        if self.exit_on_crash:
            os._exit(1)

        def die() -> None:
            self.stop()
            self.crashed = True  # set once the port is closed, so tests can wait on it

        threading.Thread(target=die, daemon=True).start()

    def wait_while_fault(self, mode: str) -> None:
        """Block while ``mode`` is active or until the app stops: a hung process."""
        with self.cond:
            self.cond.wait_for(lambda: self._fault.mode != mode or self._stopping)

    def pause(self, seconds: float) -> None:
        """Sleep, but wake up early when the app stops."""
        with self.cond:
            self.cond.wait_for(lambda: self._stopping, seconds)

    # ------------------------------------------------------------------ requests

    def dispatch(self, request: Request) -> Reply | None:
        """Apply the active fault, then route. ``None`` means: never answer."""
        if request.path.startswith(CONTROL_PREFIX):
            return self._control(request)
        fault = self._fault
        if fault.mode == "hang":
            self.wait_while_fault("hang")
            if self._stopping:
                return None
        elif fault.mode == "slow":
            self.pause(fault.delay)
        elif fault.mode == "error500":
            return internal_error()
        try:
            return self.route(request) or not_found()
        except BadRequest:
            return internal_error()

    def route(self, request: Request) -> Reply | None:
        """Answer one request; ``None`` for an unknown route (404)."""
        raise NotImplementedError

    def control(self, request: Request) -> Reply | None:
        """Hook: extra ``/__sim/...`` control routes; None for unknown ones (404)."""
        return None

    def _control(self, request: Request) -> Reply:
        if request.path != CONTROL_PREFIX + "fault":
            return self.control(request) or not_found()
        if request.method == "GET":
            return json_reply(self._fault.to_dict())
        if request.method != "POST":
            return text_reply("405: Method Not Allowed", 405)
        try:
            data = json.loads(request.body or b"{}")
            if not isinstance(data, dict):
                raise ValueError("body must be a JSON object")
            mode = data.pop("mode", "none")
            if not isinstance(mode, str):
                raise ValueError("mode must be a string")
            fault = self.set_fault(mode, **data)
        except (ValueError, TypeError) as exc:
            return json_reply({"error": str(exc)}, 400)
        return json_reply(fault.to_dict())

    # ------------------------------------------------------------------ logging

    def log(self, line: str) -> None:
        """Keep a line (tests read ``log_lines``) and echo it where the real server would."""
        for part in line.splitlines() or [""]:
            self.log_lines.append(part)
        if self.log_stream is not None:
            try:
                self.log_stream.write(line + "\n")
                self.log_stream.flush()
            except (OSError, ValueError):
                pass


# ---------------------------------------------------------------------- command line


def add_common_args(parser: argparse.ArgumentParser, fault_modes: frozenset[str]) -> None:
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--fault", choices=sorted(fault_modes), default="none")
    parser.add_argument("--slow-delay", type=float, default=5.0, help="seconds, fault slow")
    parser.add_argument("--crash-after", type=float, default=0.0, help="seconds, fault crash")
    parser.add_argument("--startup-delay", type=float, default=0.0,
                        help="seconds before the port opens (connections refused until then)")


def serve_forever(app: SimApp, args: argparse.Namespace, **fault_params: float) -> int:
    """Run a simulator as a process until SIGTERM/SIGINT; print the ``listening on`` line."""
    done = threading.Event()
    received: list[int] = []

    def _on_signal(signum: int, frame: Any) -> None:
        received.append(signum)
        done.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _on_signal)
    # Booting like ComfyUI: connections refused, yet a SIGTERM ends it at once (the real
    # server exits within 0.3 s of one while it loads, capture boot_timeline.json).
    if args.startup_delay > 0 and done.wait(args.startup_delay):
        return _end(app, received)
    try:
        app.start()
    except OSError as exc:
        print(f"error: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    print(f"listening on {app.url}", flush=True)
    if args.fault != "none":
        app.set_fault(
            args.fault, delay=args.slow_delay, crash_after=args.crash_after, **fault_params
        )
    while not done.wait(0.5):
        pass
    app.stop()
    return _end(app, received)


def _end(app: SimApp, received: list[int]) -> int:
    """Exit as the real server does: ComfyUI sets no SIGTERM handler, so the signal ends
    it (status -15 to its parent); Next.js exits 0 on it; Ctrl-C is a clean stop (0)."""
    if app.sigterm_kills and received[:1] == [signal.SIGTERM] and hasattr(os, "kill"):
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
    return 0
