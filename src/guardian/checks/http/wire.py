"""A small HTTP/1.1 client for plain-``http://`` probes: one kept-alive connection per check.

Why not httpx here: a health probe is one GET, yet httpx spends ~1 ms of CPU on it (request
and response objects, anyio cancel scopes, h11, a failed ``import sniffio`` per lock, a new
TCP connection each time), and importing it costs ~5 MiB and hundreds of ms. At hundreds of
targets that is most of Guardian's CPU (``bench/bench_probe.py`` measures both). This module
only manages a connection and frames the exchange; parsing is httptools (llhttp, the C
parser uvicorn uses), so nothing of HTTP's grammar is written by hand. It serves the http
check's GET/HEAD and the ComfyUI checks' GETs and small JSON POSTs (``/interrupt``,
``/free``, ``/prompt``). TLS stays on httpx (``checks/http.py`` and ``checks/comfyui.py``
pick by scheme).

Connection rules:

* Keep-alive only when the server allows it and the last response was read to its end.
  Any failure closes the connection, so the run after a failure proves a fresh connect.
* A kept connection that the server closed while idle (its keep-alive timeout) is noticed
  before reuse; one that dies in the race before the first response byte is retried once on
  a new connection, for GET and HEAD only: a POST the server may have acted on is not sent
  twice (RFC 9110 9.2.2), it fails. A response that started and broke is never retried.
* A request body is sent whole with its ``Content-Length`` (bodies here are small JSON);
  POST without a body says ``Content-Length: 0``, as servers that demand a length need.
* Bodies are capped (:class:`~guardian.checks.http.body.BodyTooLarge`); time is bounded by
  the caller's deadline (``asyncio.timeout``), the connect by ``connect_timeout``.
* The head is capped too, like any hardened client (nginx, Go's net/http): the status line
  at 8 KiB, the head at 64 KiB and 100 header fields. A target that streams headers
  forever fails its check ("response headers over 64 KiB") after that much, in linear
  time (repeated fields are joined once, at the end): it never costs Guardian memory or
  event-loop time, so it can never make Guardian look "overloaded" and be excused.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import httptools

from guardian import __version__
from guardian.checks.http.body import BodyTooLarge

READ_CHUNK = 65536
MAX_STATUS_LINE = 8 * 1024
MAX_HEAD_BYTES = 64 * 1024  # status line + every header line
MAX_HEADERS = 100
USER_AGENT = f"guardian/{__version__}"
IDEMPOTENT = frozenset({"GET", "HEAD"})  # safe to send again after a stale connection
BODILESS = frozenset({"GET", "HEAD"})  # no Content-Length unless a body is given


class WireError(Exception):
    """The exchange failed; the message is the check's reason."""


class ConnectTimeout(WireError):
    def __init__(self, seconds: float) -> None:
        super().__init__(f"connect timed out after {seconds:g}s")


class InvalidResponse(WireError):
    def __init__(self, why: str) -> None:
        super().__init__(f"invalid HTTP response: {why}")


class HeadTooLarge(WireError):
    """The response's status line or headers crossed a cap; reading stopped there."""


class _Stale(Exception):
    """A reused connection closed before any byte of the answer: safe to retry once."""


@dataclass(frozen=True, slots=True)
class WireResponse:
    status: int
    headers: Mapping[str, str]  # lower-case names; repeated headers joined with ", "
    body: bytes | None  # None when the body was deliberately not read (HEAD, redirects)


class _Message:
    """httptools callbacks for one response."""

    __slots__ = (
        "body", "complete", "count", "fields", "head_bytes", "head_error", "headers",
        "headers_done", "keep_alive", "limit", "messages", "parser", "status_bytes",
        "too_large",
    )  # fmt: skip

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.headers: dict[str, str] = {}
        self.fields: dict[str, list[str]] = {}  # joined once at the end: never quadratic
        self.head_bytes = 0
        self.count = 0
        self.status_bytes = 0
        self.head_error: str | None = None
        self.body = bytearray()
        self.headers_done = False
        self.complete = False
        self.too_large = False
        self.messages = 0
        self.keep_alive = False
        self.parser: httptools.HttpResponseParser | None = None

    def on_message_begin(self) -> None:
        self.messages += 1

    def on_status(self, status: bytes) -> None:
        self.status_bytes += len(status)
        if self.status_bytes > MAX_STATUS_LINE and self.head_error is None:
            self.head_error = f"status line over {MAX_STATUS_LINE // 1024} KiB"

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.head_error is not None:
            return
        self.head_bytes += len(name) + len(value) + 4
        self.count += 1
        if self.count > MAX_HEADERS:
            self.head_error = f"more than {MAX_HEADERS} response headers"
            return
        if self.head_bytes > MAX_HEAD_BYTES:
            self.head_error = f"response headers over {MAX_HEAD_BYTES // 1024} KiB"
            return
        key = name.decode("latin-1").lower()
        self.fields.setdefault(key, []).append(value.decode("latin-1"))

    def on_headers_complete(self) -> None:
        self.headers = {k: ", ".join(v) for k, v in self.fields.items()}
        self.headers_done = True

    def on_body(self, body: bytes) -> None:
        if self.too_large or len(self.body) + len(body) > self.limit:
            self.too_large = True
            return
        self.body += body

    def on_message_complete(self) -> None:
        self.complete = True
        # Only valid now: once feed_data returns, the parser has reset for the next message.
        self.keep_alive = self.parser is not None and self.parser.should_keep_alive()


def _clean(text: str, what: str) -> str:
    if "\r" in text or "\n" in text or "\0" in text:
        raise WireError(f"invalid {what}: contains a line break or NUL")
    return text


class WireClient:
    """One connection to one origin at a time; not for concurrent use (one check, one run)."""

    def __init__(self, headers: Mapping[str, str] | None = None) -> None:
        self._extra = "".join(
            f"{_clean(k, 'header name')}: {_clean(v, 'header value')}\r\n"
            for k, v in (headers or {}).items()
        )
        self._own = {k.lower() for k in (headers or {})}
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._origin: tuple[str, int] | None = None
        self.connects = 0  # new TCP connections opened (tests, benchmarks)
        # The last request ended while opening its connection (refused, DNS, unreachable,
        # timed out): callers word that "cannot connect", unlike a failure in an exchange.
        self.connect_failed = False

    async def request(
        self,
        method: str,
        host: str,
        port: int,
        target: str,
        *,
        limit: int,
        connect_timeout: float,
        skip_body: Callable[[int, Mapping[str, str]], bool] | None = None,
        body: bytes | None = None,
        content_type: str | None = None,
    ) -> WireResponse:
        """Send one request and read its answer (the body only if ``skip_body`` says so).

        ``body`` goes out with its ``Content-Length`` and, when given, ``content_type``.
        """
        head = self._head(method, host, port, target, body, content_type)
        message = head if body is None else head + body
        origin = (host, port)
        self.connect_failed = False
        reused = self._usable(origin)
        if not reused:
            await self.aclose()
            await self._connect(origin, connect_timeout)
        try:
            try:
                return await self._exchange(message, method, limit, skip_body, reused)
            except _Stale:
                if method not in IDEMPOTENT:
                    raise InvalidResponse(
                        "peer closed the kept-alive connection without an answer"
                        f" (a {method} is not sent twice)"
                    ) from None
                await self.aclose()
                await self._connect(origin, connect_timeout)
                return await self._exchange(message, method, limit, skip_body, False)
        except BaseException:
            await self.aclose()
            raise

    def _usable(self, origin: tuple[str, int]) -> bool:
        reader, writer = self._reader, self._writer
        if reader is None or writer is None or self._origin != origin:
            return False
        return not (reader.at_eof() or writer.is_closing())

    async def _connect(self, origin: tuple[str, int], timeout: float) -> None:
        self.connect_failed = True  # until open: also when a caller's deadline cancels us
        try:
            async with asyncio.timeout(timeout):
                self._reader, self._writer = await asyncio.open_connection(
                    origin[0], origin[1], limit=READ_CHUNK
                )
        except TimeoutError:
            raise ConnectTimeout(timeout) from None
        self.connect_failed = False
        self._origin = origin
        self.connects += 1

    def _head(
        self, method: str, host: str, port: int, target: str, body: bytes | None,
        content_type: str | None,
    ) -> bytes:
        lines = f"{_clean(method, 'method')} {_clean(target, 'request target')} HTTP/1.1\r\n"
        if "host" not in self._own:
            shown = f"[{host}]" if ":" in host else host
            lines += f"Host: {shown}\r\n" if port == 80 else f"Host: {shown}:{port}\r\n"
        if "user-agent" not in self._own:
            lines += f"User-Agent: {USER_AGENT}\r\n"
        if "accept" not in self._own:
            lines += "Accept: */*\r\n"
        if content_type is not None and "content-type" not in self._own:
            lines += f"Content-Type: {_clean(content_type, 'content type')}\r\n"
        if body is not None or method not in BODILESS:
            lines += f"Content-Length: {len(body or b'')}\r\n"
        return (lines + self._extra + "\r\n").encode("latin-1", "replace")

    async def _exchange(
        self,
        message: bytes,
        method: str,
        limit: int,
        skip_body: Callable[[int, Mapping[str, str]], bool] | None,
        reused: bool,
    ) -> WireResponse:
        reader, writer = self._reader, self._writer
        assert reader is not None and writer is not None
        msg = _Message(limit)
        parser = msg.parser = httptools.HttpResponseParser(msg)
        writer.write(message)
        received = 0
        skipping = False
        while not msg.complete:
            try:
                data = await reader.read(READ_CHUNK)
            except ConnectionResetError:
                if reused and received == 0:
                    raise _Stale from None
                raise
            if not data:
                if reused and received == 0:
                    raise _Stale
                if msg.headers_done and _close_delimited(msg.headers):
                    break  # HTTP/1.0 style: the body ends with the connection
                what = "body" if msg.headers_done else "headers"
                raise InvalidResponse(
                    f"peer closed connection without sending complete message {what}"
                    f" (received {received} bytes)"
                )
            received += len(data)
            if not msg.headers_done and received > MAX_HEAD_BYTES + MAX_STATUS_LINE:
                # Whatever the parser makes of it, this much without the end of the head
                # is a hostile or broken target: stop reading.
                raise HeadTooLarge(f"response headers over {MAX_HEAD_BYTES // 1024} KiB")
            try:
                parser.feed_data(data)
            except httptools.HttpParserUpgrade:
                raise InvalidResponse("unexpected protocol upgrade") from None
            except httptools.HttpParserError as exc:
                if msg.head_error is not None:
                    raise HeadTooLarge(msg.head_error) from None
                raise InvalidResponse(_parser_reason(exc)) from None
            if msg.head_error is not None:
                raise HeadTooLarge(msg.head_error)
            if msg.too_large:
                raise BodyTooLarge(limit)
            if msg.headers_done and not msg.complete:
                status = parser.get_status_code()
                declared = msg.headers.get("content-length", "")
                if method == "HEAD" or (skip_body is not None and skip_body(status, msg.headers)):
                    skipping = True
                    break
                if declared.isdigit() and int(declared) > limit:
                    raise BodyTooLarge(limit)
        status = parser.get_status_code()
        keep = msg.complete and not skipping and msg.messages == 1 and msg.keep_alive
        if not keep:
            await self.aclose()
        return WireResponse(status, msg.headers, None if skipping else bytes(msg.body))

    async def aclose(self) -> None:
        writer, self._writer, self._reader, self._origin = self._writer, None, None, None
        if writer is not None:
            writer.transport.abort()  # no FIN handshake to wait for: the peer may be hostile
            with contextlib.suppress(Exception):
                await writer.wait_closed()


def _close_delimited(headers: Mapping[str, str]) -> bool:
    """No length and not chunked: the body runs until the server closes (RFC 9112 6.3)."""
    return "content-length" not in headers and "chunked" not in headers.get(
        "transfer-encoding", ""
    ).lower()


def _parser_reason(exc: Exception) -> str:
    return str(exc) or type(exc).__name__
