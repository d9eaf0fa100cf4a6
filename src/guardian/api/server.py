"""Serving the API on its own thread and event loop, with every resource a client can take bounded.

Why a thread: on the checks' event loop, 1000 keep-alive clients would delay checks past
their timeouts and healthy services would be restarted. Here uvicorn
runs a private loop in a daemon thread; the checks' loop never runs a request. What the
API reads crosses threads through :mod:`guardian.api.bridge` (snapshots; mutating calls
are submitted to the checks' loop).

Why these limits (all from ``[api]``):

* ``max_connections``: a connection over the cap is answered 503 and closed at once, so
  idle clients cannot take the file descriptors checks and restarts need. The runtime
  lowers the cap further when ``RLIMIT_NOFILE`` is small (see :mod:`guardian.support.fdlimit`).
* ``header_timeout``: a connection must deliver a complete request head within this
  many seconds (from connect, or from the end of the previous response), else it is
  closed (408 when something was sent). uvicorn alone has no time-before-request limit.
* ``max_header_bytes``: a request head larger than this is answered 431 and closed before
  it is buffered; with httptools uvicorn would otherwise buffer a 64 MiB header.
* ``keep_alive_timeout``: idle keep-alive connections are closed after it.
* At the cap, a new connection first takes the place of the one that has waited longest
  for a request head (a slow-loris socket, an idle keep-alive one) rather than being
  turned away; only when every connection is busy is it answered 503. One peer address
  holds at most ``PEER_SHARE`` of the connections (for a non-loopback ``api.host``).
* ``write_timeout``: a response the client does not read (pipelined requests nobody
  reads, a stalled reader) is aborted after this long without progress, so it does not
  keep a slot forever.
* A request body over ``max_body_bytes`` is answered 413 (a declared ``Content-Length``
  before a byte of it is read); only the head counts toward the 431 limit.
* The accept backlog is small, so a burst of connects waits in the kernel (no fd) rather
  than being accepted all at once; ``accept()`` EMFILE errors are logged once per
  interval with a count, never as a traceback per attempt.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import logging
import math
import socket
import threading
import time
from collections.abc import Generator
from dataclasses import dataclass
from email.utils import formatdate
from typing import Any

import uvicorn
from uvicorn.server import ServerState

log = logging.getLogger("guardian.api")

# asyncio accepts up to `backlog` sockets per readiness event before any protocol runs, so
# this also bounds how many over-cap connections hold an fd at once while the API thread
# is starved (seen: 210 fds under a 64-connection cap with a backlog of 64 on a loaded box).
BACKLOG = 16
EMFILE_LOG_INTERVAL = 30.0
_RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})

try:  # the fast parser when present (as in Guardian's dependencies), else h11
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as _BaseProtocol
except ImportError:  # pragma: no cover - httptools missing
    from uvicorn.protocols.http.h11_impl import H11Protocol as _BaseProtocol  # type: ignore[assignment]


PEER_SHARE = 0.75  # of max_connections, per peer address
EVICT_AFTER = 1.0  # s waiting for a head before a connection may give way to a new one


@dataclass(frozen=True, slots=True)
class ServeLimits:
    max_connections: int = 64
    max_header_bytes: int = 32 * 1024
    header_timeout: float = 5.0
    keep_alive_timeout: float = 5.0
    write_timeout: float = 10.0
    max_body_bytes: int = 64 * 1024


@dataclass(slots=True)
class ServeStats:
    """Counters of what the limits turned away (read by tests and the bench)."""

    rejected_connections: int = 0
    header_too_large: int = 0
    header_timeouts: int = 0
    accept_errors: int = 0
    evicted: int = 0
    write_timeouts: int = 0
    body_too_large: int = 0


def _reply(status: str, detail: str) -> bytes:
    body = ('{"detail":"' + detail + '"}').encode()
    head = (
        f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode() + body


def guarded_protocol(limits: ServeLimits, stats: ServeStats) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol with a connection cap, a head deadline and a head size cap."""

    by_peer: dict[str, set[Any]] = {}
    per_peer = max(1, int(limits.max_connections * PEER_SHARE))

    class GuardedProtocol(_BaseProtocol):
        _rejected = False
        _head_bytes = 0
        _body_bytes = 0
        _tail = b""
        _waiting_since = 0.0  # loop time the connection started waiting for a head
        _stalled_since: float | None = None  # loop time the client last read nothing
        _stalled_size = 0  # bytes waiting to be read then
        _peer = ""
        _head_timer: asyncio.TimerHandle | None = None
        _write_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            peername = transport.get_extra_info("peername")
            self._peer = str(peername[0]) if isinstance(peername, tuple) and peername else ""
            mine = by_peer.get(self._peer, set())
            full = len(self.connections) >= limits.max_connections
            if (full or len(mine) >= per_peer) and not self._evict(
                    mine if len(mine) >= per_peer else self.connections):
                self._rejected = True
                stats.rejected_connections += 1
                transport.write(_reply("503 Service Unavailable", "too many connections"))
                transport.close()
                return
            super().connection_made(transport)
            by_peer.setdefault(self._peer, set()).add(self)
            self._arm(limits.header_timeout)

        def _evict(self, among: set[Any]) -> bool:
            """Close the connection that has waited longest for a request head."""
            # A fresh connection's head may be in flight: only one that has waited a while
            # (a slow-loris socket, an idle keep-alive one) gives way.
            oldest = self.loop.time() - min(EVICT_AFTER, limits.header_timeout / 2)
            idle = [c for c in among if isinstance(c, GuardedProtocol) and c._awaiting_head()
                    and c._waiting_since <= oldest
                    and c.transport is not None and not c.transport.is_closing()]
            if not idle:
                return False
            victim = min(idle, key=lambda c: c._waiting_since)
            stats.evicted += 1
            victim._disarm()
            victim.transport.abort()
            victim.connections.discard(victim)  # its slot is free now, not at connection_lost
            return True

        def connection_lost(self, exc: Exception | None) -> None:
            if self._rejected:
                return
            self._disarm()
            if self._write_timer is not None:
                self._write_timer.cancel()
                self._write_timer = None
            mine = by_peer.get(self._peer)
            if mine is not None:
                mine.discard(self)
                if not mine:
                    del by_peer[self._peer]
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if self._rejected or self.transport.is_closing():
                return
            if self._awaiting_head():
                # Only the head counts toward the 431 limit; a body is for 413.
                joined = self._tail + data
                end = joined.find(b"\r\n\r\n")
                self._head_bytes += len(data) if end < 0 else max(0, end + 4 - len(self._tail))
                self._tail = joined[-3:]
                if self._head_bytes > limits.max_header_bytes:
                    stats.header_too_large += 1
                    self._close_with(
                        "431 Request Header Fields Too Large", "request head too large"
                    )
                    return
            super().data_received(data)

        def on_headers_complete(self) -> None:
            self._tail = b""
            super().on_headers_complete()
            declared = next((v for k, v in self.headers or [] if k == b"content-length"), b"")
            if declared.isdigit() and int(declared) > limits.max_body_bytes:
                self._too_large()

        def on_body(self, body: bytes) -> None:
            if self.transport.is_closing():
                return
            self._body_bytes += len(body)
            if self._body_bytes > limits.max_body_bytes:
                self._too_large()
                return
            super().on_body(body)

        def _too_large(self) -> None:
            stats.body_too_large += 1
            if self.cycle is not None:
                self.cycle.response_complete = True  # the app answers nothing more here
            self._close_with("413 Content Too Large",
                             f"request body over {limits.max_body_bytes} bytes")

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._head_bytes = 0
            self._body_bytes = 0
            self._arm(max(limits.header_timeout, limits.keep_alive_timeout))

        def _awaiting_head(self) -> bool:
            cycle = self.cycle
            return cycle is None or bool(cycle.response_complete)

        def _arm(self, seconds: float) -> None:
            self._disarm()
            self._waiting_since = self.loop.time()
            self._head_timer = self.loop.call_later(seconds, self._head_deadline)

        def _disarm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_deadline(self) -> None:
            self._head_timer = None
            transport = self.transport
            if transport is None or transport.is_closing():
                return
            if not self._awaiting_head():
                return  # a request is being answered; the deadline re-arms after it
            stats.header_timeouts += 1
            if self._head_bytes:
                self._close_with("408 Request Timeout", "request head not received in time")
            elif transport.get_write_buffer_size():
                transport.abort()  # close() would wait for a reader that never reads
            else:
                transport.close()

        def pause_writing(self) -> None:
            """The client stopped reading (the buffer is full): watch it from now on."""
            super().pause_writing()
            if self._write_timer is None:
                self._stalled_since = None
                self._write_timer = self.loop.call_later(limits.write_timeout / 2,
                                                         self._write_check)

        def _write_check(self) -> None:
            """Abort a connection whose client has read nothing for ``write_timeout``."""
            self._write_timer = None
            transport = self.transport
            if transport is None or transport.is_closing():
                return
            now = self.loop.time()
            waiting = transport.get_write_buffer_size()
            if not waiting:
                self._stalled_since = None
                return  # all read: watched again at the next pause
            if self._stalled_since is None or waiting < self._stalled_size:
                self._stalled_since = now  # first seen, or the client read some: progress
            self._stalled_size = waiting
            if now - self._stalled_since >= limits.write_timeout:
                stats.write_timeouts += 1
                self._disarm()
                transport.abort()
                return
            self._write_timer = self.loop.call_later(limits.write_timeout / 2, self._write_check)

        def _close_with(self, status: str, detail: str) -> None:
            self._disarm()
            self.transport.write(_reply(status, detail))
            self.transport.close()

    return GuardedProtocol


class _LiveDateState(ServerState):
    """uvicorn's shared server state whose default headers carry a current ``Date``.

    uvicorn refreshes the Date header from its 10 Hz main-loop tick; computed here when a
    response asks for it (once per second at most), the tick is not needed for it.
    """

    def __init__(self) -> None:
        self._static: list[tuple[bytes, bytes]] = []
        self._second = -1
        self._headers: list[tuple[bytes, bytes]] = []
        super().__init__()

    @property
    def default_headers(self) -> list[tuple[bytes, bytes]]:
        now = time.time()
        if int(now) != self._second:
            self._second = int(now)
            self._headers = [(b"date", formatdate(now, usegmt=True).encode()), *self._static]
        return self._headers

    @default_headers.setter
    def default_headers(self, headers: list[tuple[bytes, bytes]]) -> None:
        self._static = [(k, v) for k, v in headers if k.lower() != b"date"]
        self._second = -1


class _Server(uvicorn.Server):
    """uvicorn without its signal handlers (Guardian's runtime owns SIGINT/SIGTERM) and
    without its 10 Hz main-loop tick: an idle API thread sleeps until a connection comes.

    The tick did three things. The Date header is computed per response instead
    (:class:`_LiveDateState`); ``should_exit`` wakes the serving loop when set (from any
    thread); ``limit_max_requests`` and ``callback_notify`` Guardian does not use, and a
    config with either gets uvicorn's own loop back.
    """

    def __init__(self, config: uvicorn.Config) -> None:
        self._exit_requested = False
        self._wake: asyncio.Event | None = None
        self._wake_loop: asyncio.AbstractEventLoop | None = None
        super().__init__(config)
        self.server_state = _LiveDateState()
        self.server_state.default_headers = list(config.encoded_headers)

    @property
    def should_exit(self) -> bool:
        return self._exit_requested

    @should_exit.setter
    def should_exit(self, value: bool) -> None:
        self._exit_requested = value
        wake, loop = self._wake, self._wake_loop
        if value and wake is not None and loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nothing to wake
                loop.call_soon_threadsafe(wake.set)

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield

    async def main_loop(self) -> None:
        config = self.config
        if config.limit_max_requests is not None or config.callback_notify is not None:
            await super().main_loop()
            return
        self._wake = wake = asyncio.Event()
        self._wake_loop = asyncio.get_running_loop()
        while not self.should_exit:  # set before the event existed, or a spurious wake
            await wake.wait()
            wake.clear()


class _ResourceErrorLog:
    """A loop exception handler that turns accept() EMFILE storms into one line per interval."""

    def __init__(self, stats: ServeStats, interval: float = EMFILE_LOG_INTERVAL) -> None:
        self.stats, self.interval = stats, interval
        self._last = -math.inf
        self._since_last = 0

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if isinstance(exc, OSError) and exc.errno in _RESOURCE_ERRNOS:
            self.stats.accept_errors += 1
            self._since_last += 1
            now = time.monotonic()
            if now - self._last >= self.interval:
                log.error(
                    "API cannot accept connections: %s (%d times since the last report); "
                    "checks and restarts keep their file descriptors",
                    exc.strerror or exc,
                    self._since_last,
                    extra={"event": "api_accept_error", "count": self._since_last},
                )
                self._last, self._since_last = now, 0
            return
        loop.default_exception_handler(context)


class ApiServer:
    """The API on its own socket, thread and event loop; start, then stop gracefully.

    The socket is bound here rather than by uvicorn so a taken port is a clear OSError
    (uvicorn would ``sys.exit``) and port 0 reports the port it got.
    """

    def __init__(
        self,
        app: Any,
        host: str = "127.0.0.1",
        port: int = 8787,
        limits: ServeLimits | None = None,
    ) -> None:
        self.app, self.host, self.requested_port = app, host, port
        self.port = port
        self.limits = limits or ServeLimits()
        self.stats = ServeStats()
        self.server: uvicorn.Server | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._done: concurrent.futures.Future[None] = concurrent.futures.Future()

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def _bind(self) -> socket.socket:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        # proto must be IPPROTO_TCP, not 0: asyncio only sets TCP_NODELAY on connections
        # from such sockets, and without it Nagle + delayed ACK add ~40 ms per keep-alive
        # response (headers and body are two writes).
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self.requested_port))
        except OSError as e:
            sock.close()
            raise OSError(
                e.errno, f"cannot listen on {self.host}:{self.requested_port}: {e.strerror}"
            ) from None
        sock.setblocking(False)
        return sock

    async def start(self) -> int:
        """Bind, serve on the API thread, return once accepting connections; the bound port."""
        sock = self._bind()
        self.port = sock.getsockname()[1]
        limits = self.limits
        config = uvicorn.Config(
            self.app,
            http=guarded_protocol(limits, self.stats),
            log_config=None,
            access_log=False,
            lifespan="off",
            server_header=False,
            backlog=min(BACKLOG, max(8, limits.max_connections)),
            timeout_keep_alive=max(1, math.ceil(limits.keep_alive_timeout)),
            h11_max_incomplete_event_size=limits.max_header_bytes,
            timeout_graceful_shutdown=3,
        )
        self.server = server = _Server(config)
        self._done = concurrent.futures.Future()
        self._thread = threading.Thread(
            target=self._serve_thread, args=(server, sock), name="guardian-api", daemon=True
        )
        self._thread.start()
        while not server.started:
            if not self._thread.is_alive():
                raise RuntimeError(f"API server stopped during startup: {self._error!r}")
            await asyncio.sleep(0.01)
        log.info("API listening on %s", self.url, extra={"event": "api_listening",
                                                          "port": self.port})
        return self.port

    def _serve_thread(self, server: uvicorn.Server, sock: socket.socket) -> None:
        loop = asyncio.new_event_loop()
        self.loop = loop
        loop.set_exception_handler(_ResourceErrorLog(self.stats))
        try:
            loop.run_until_complete(server.serve(sockets=[sock]))
        except SystemExit as e:  # uvicorn's startup failure path
            self._error = RuntimeError(f"API server failed to start (exit {e.code})")
        except BaseException as e:
            self._error = e
            log.exception("API server ended with an error")
        finally:
            sock.close()
            with contextlib.suppress(Exception):
                loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()
            self._done.set_result(None)

    async def stop(self, timeout: float = 5.0) -> None:
        """Stop accepting, let running requests finish (bounded), then return."""
        server, thread = self.server, self._thread
        if server is None or thread is None:
            return
        server.should_exit = True
        done = asyncio.wrap_future(self._done)
        try:
            await asyncio.wait_for(asyncio.shield(done), timeout)
        except TimeoutError:
            server.force_exit = True
            try:
                await asyncio.wait_for(done, 1.0)
            except TimeoutError:
                log.warning("API thread did not stop in time; leaving it (daemon)")
        self.server = None
        self._thread = None


async def serve(
    app: Any, host: str = "127.0.0.1", port: int = 8787, limits: ServeLimits | None = None
) -> ApiServer:
    """Start serving ``app``; returns the running :class:`ApiServer` (call ``stop()``)."""
    server = ApiServer(app, host, port, limits)
    await server.start()
    return server
