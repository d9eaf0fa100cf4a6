"""The simulated ComfyUI's ``/ws``: the handshake and ``status`` broadcasts to every client.

ComfyUI sends each new client ``{"type": "status", "data": {"status": {"exec_info":
{"queue_remaining": N}}, "sid": SID}}`` and, on every queue change, the same without ``sid``
to **every** connected client (execution events go only to the submitting client; the
simulator sends none over the socket). Standard library only: RFC 6455 server frames are
unmasked text frames; what a client sends is read only to notice that it left.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import queue
import struct
import threading
import uuid
from io import BufferedIOBase
from typing import Any

from guardian.demo.http import Reply, Request, text_reply

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_CLOSE = object()


def frame(payload: bytes, opcode: int = 0x1) -> bytes:
    """One unmasked, final server frame."""
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, n)
    elif n < 1 << 16:
        head = struct.pack("!BBH", 0x80 | opcode, 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 127, n)
    return head + payload


class WsHub:
    """Connected websocket clients, each with its own outbox (so a broadcast never blocks
    the caller, which holds the simulator's lock)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._clients: dict[str, queue.SimpleQueue[object]] = {}

    @property
    def clients(self) -> int:
        with self._lock:
            return len(self._clients)

    def broadcast(self, message: dict[str, Any]) -> None:
        data = frame(json.dumps(message).encode())
        with self._lock:
            for outbox in self._clients.values():
                outbox.put(data)

    def close_all(self) -> None:
        with self._lock:
            for outbox in self._clients.values():
                outbox.put(_CLOSE)

    def accept(self, request: Request, first: dict[str, Any]) -> Reply:
        """The 101 answer to a websocket upgrade, or 400 for anything else. ``first`` is
        the greeting (``sid`` is added)."""
        key = request.headers.get("Sec-WebSocket-Key") or request.headers.get(
            "sec-websocket-key")
        upgrade = (request.headers.get("Upgrade") or request.headers.get("upgrade") or "")
        if not key or upgrade.lower() != "websocket":
            return text_reply("400: Bad Request (not a websocket upgrade)", 400)
        accept = base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()
        sid = request.param("clientId") or uuid.uuid4().hex
        greeting = {"type": "status", "data": {**first, "sid": sid}}

        def serve(rfile: BufferedIOBase, wfile: BufferedIOBase) -> None:
            outbox: queue.SimpleQueue[object] = queue.SimpleQueue()
            outbox.put(frame(json.dumps(greeting).encode()))
            name = uuid.uuid4().hex
            with self._lock:
                self._clients[name] = outbox
            reader = threading.Thread(target=_drain, args=(rfile, outbox), daemon=True)
            reader.start()
            try:
                while True:
                    data = outbox.get()
                    if data is _CLOSE or not isinstance(data, bytes):
                        with contextlib.suppress(OSError):
                            wfile.write(frame(b"\x03\xe8", 0x8))
                        return
                    wfile.write(data)
            except OSError:
                return
            finally:
                with self._lock:
                    self._clients.pop(name, None)

        return Reply(101, headers={"Upgrade": "websocket", "Connection": "Upgrade",
                                   "Sec-WebSocket-Accept": accept}, takeover=serve)


def _drain(rfile: BufferedIOBase, outbox: queue.SimpleQueue[object]) -> None:
    """Read the client's frames until it closes or goes; then end its writer."""
    try:
        while True:
            head = rfile.read(2)
            if len(head) < 2:
                break
            opcode, n = head[0] & 0x0F, head[1] & 0x7F
            if n == 126:
                n = struct.unpack("!H", rfile.read(2))[0]
            elif n == 127:
                n = struct.unpack("!Q", rfile.read(8))[0]
            if head[1] & 0x80:
                rfile.read(4)
            if n > 1 << 20 or len(rfile.read(n)) < n or opcode == 0x8:
                break
    except (OSError, ValueError, struct.error):
        pass
    outbox.put(_CLOSE)
