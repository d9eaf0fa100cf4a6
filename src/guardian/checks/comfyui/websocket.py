"""ComfyUI's ``/ws`` as a listener for queue changes: only its ``status`` broadcasts matter.

ComfyUI sends a ``status`` message (``exec_info.queue_remaining``) to every websocket client
whenever its queue changes (a prompt put, taken, done, deleted), while execution events go
only to the client that submitted. So one quiet connection tells Guardian *when* to read
``/queue``, at no cost while nothing changes. A small RFC 6455 client on asyncio streams:
it sends nothing but its masked close and pongs, and a frame larger than ``max_frame`` (an
extension broadcasting big payloads) ends the connection with a reason rather than growing
memory. ``https://`` targets are spoken to over TLS (``wss://``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import ssl
import struct
from urllib.parse import quote, urlsplit

from guardian.checks.comfyui.client import ComfyUIError

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
MAX_HEADER = 16 * 1024


class StatusStream:
    """One websocket connection to ComfyUI, yielding ``queue_remaining`` per status message."""

    def __init__(self, url: str, client_id: str, *, timeout: float, max_frame: int) -> None:
        self.url = url.rstrip("/")
        self.client_id = client_id
        self.timeout = timeout
        self.max_frame = max_frame
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def connect(self) -> None:
        """Open and upgrade; :class:`ComfyUIError` with a reason when it cannot."""
        parts = urlsplit(self.url)
        tls = parts.scheme.lower() == "https"
        host = parts.hostname or "127.0.0.1"
        try:
            port = parts.port or (443 if tls else 80)
        except ValueError as exc:
            raise ComfyUIError(f"bad URL {self.url}: {exc}") from exc
        context = ssl.create_default_context() if tls else None
        try:
            async with asyncio.timeout(self.timeout):
                reader, writer = await asyncio.open_connection(host, port, ssl=context,
                                                               limit=MAX_HEADER)
        except (OSError, TimeoutError) as exc:
            raise ComfyUIError(f"websocket: cannot connect to {self.url}: "
                               f"{getattr(exc, 'strerror', None) or type(exc).__name__}") from exc
        self._reader, self._writer = reader, writer
        key = base64.b64encode(os.urandom(16)).decode()
        path = (parts.path.rstrip("/") or "") + "/ws?clientId=" + quote(self.client_id)
        request = (f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                   f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                   "Sec-WebSocket-Version: 13\r\n\r\n")
        try:
            writer.write(request.encode())
            async with asyncio.timeout(self.timeout):
                await writer.drain()
                head = await reader.readuntil(b"\r\n\r\n")
        except (OSError, TimeoutError, asyncio.IncompleteReadError,
                asyncio.LimitOverrunError) as exc:
            await self.aclose()
            raise ComfyUIError(f"websocket: no upgrade from {self.url}: "
                               f"{type(exc).__name__}") from exc
        status_line, _, rest = head.decode("latin-1").partition("\r\n")
        expected = base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()
        headers = {k.strip().lower(): v.strip() for k, _, v in
                   (line.partition(":") for line in rest.split("\r\n") if line)}
        if " 101 " not in status_line + " " or headers.get("sec-websocket-accept") != expected:
            await self.aclose()
            raise ComfyUIError(f"websocket: {self.url}/ws answered {status_line[:80]!r}")

    async def next_status(self) -> int | None:
        """Wait for the next ``status`` message; its ``queue_remaining`` (None when absent).
        :class:`ComfyUIError` when the connection ends or misbehaves."""
        while True:
            opcode, payload = await self._frame()
            if opcode == 0x8:
                raise ComfyUIError("websocket closed by ComfyUI")
            if opcode == 0x9:
                await self._send(0xA, payload)
                continue
            if opcode != 0x1:
                continue  # binary previews, pongs
            try:
                message = json.loads(payload)
            except ValueError:
                continue
            if not isinstance(message, dict) or message.get("type") != "status":
                continue
            data = message.get("data")
            status = data.get("status") if isinstance(data, dict) else None
            info = status.get("exec_info") if isinstance(status, dict) else None
            remaining = info.get("queue_remaining") if isinstance(info, dict) else None
            return remaining if isinstance(remaining, int) else None

    async def _frame(self) -> tuple[int, bytes]:
        reader = self._reader
        if reader is None:
            raise ComfyUIError("websocket not connected")
        try:
            opcode, payload, fin = await self._one(reader)
            while not fin:  # continuation frames: bounded in total
                _, more, fin = await self._one(reader)
                payload += more
                if len(payload) > self.max_frame:
                    raise ComfyUIError(f"websocket message over {self.max_frame} bytes")
            return opcode, payload
        except (OSError, asyncio.IncompleteReadError) as exc:
            raise ComfyUIError(f"websocket connection lost: {type(exc).__name__}") from exc

    async def _one(self, reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
        head = await reader.readexactly(2)
        fin, opcode, n = bool(head[0] & 0x80), head[0] & 0x0F, head[1] & 0x7F
        if n == 126:
            n = struct.unpack("!H", await reader.readexactly(2))[0]
        elif n == 127:
            n = struct.unpack("!Q", await reader.readexactly(8))[0]
        mask = await reader.readexactly(4) if head[1] & 0x80 else b""
        if n > self.max_frame:
            raise ComfyUIError(f"websocket frame of {n} bytes over {self.max_frame}")
        payload = await reader.readexactly(n)
        if mask:
            payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        return opcode, payload, fin

    async def _send(self, opcode: int, payload: bytes) -> None:
        """A masked client frame (RFC 6455 requires clients to mask)."""
        if self._writer is None:
            return
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload[:125]))
        frame = struct.pack("!BB", 0x80 | opcode, 0x80 | len(masked)) + mask + masked
        with contextlib.suppress(OSError):
            self._writer.write(frame)
            await self._writer.drain()

    async def aclose(self) -> None:
        writer, self._writer, self._reader = self._writer, None, None
        if writer is None:
            return
        with contextlib.suppress(OSError):
            mask = os.urandom(4)
            writer.write(struct.pack("!BB", 0x88, 0x82) + mask
                         + bytes(b ^ mask[i] for i, b in enumerate(b"\x03\xe8")))
        writer.close()
        with contextlib.suppress(OSError, asyncio.TimeoutError):
            async with asyncio.timeout(1):
                await writer.wait_closed()
