"""Read an HTTP response body without trusting the server.

A health endpoint that streams forever, or answers with gigabytes, must cost Guardian a
bounded amount of memory: we stop at ``limit`` bytes and let the caller close the
connection. Time is bounded by the caller's deadline (``asyncio.timeout``), since a
slow drip of one byte per second never trips a per-read socket timeout.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import httpx


class BodyTooLarge(Exception):
    """The body crossed the cap; reading stopped there."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"body larger than {limit} bytes (stopped reading)")
        self.limit = limit


async def read_capped(response: httpx.Response, limit: int) -> bytes:
    """The decoded body of a streamed ``response``, at most ``limit`` bytes.

    Raises :class:`BodyTooLarge` as soon as more than ``limit`` bytes arrive; what was
    read is discarded. A declared ``Content-Length`` above the cap fails before reading.
    Memory stays within ``limit`` plus one decoded chunk.
    """
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(limit)
    buf = bytearray()
    async for chunk in response.aiter_bytes():
        if len(buf) + len(chunk) > limit:
            raise BodyTooLarge(limit)
        buf += chunk
    return bytes(buf)
