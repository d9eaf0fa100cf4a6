"""A fast keep-alive HTTP/1.1 server on asyncio streams: the target of the overhead bench.

It must cost far less per request than the client being measured, so it parses only the
request line and headers and always answers ``200 {"status":"healthy"}``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

BODY = b'{"status":"healthy"}'
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
    + str(len(BODY)).encode()
    + b"\r\n\r\n"
    + BODY
)


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            if not head:
                break
            writer.write(RESPONSE)
            await writer.drain()
            if b"connection: close" in head.lower():
                break
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        pass
    finally:
        writer.close()


async def serve(port: int) -> None:
    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=2048)
    async with server:
        await server.serve_forever()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    asyncio.run(serve(ap.parse_args().port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
