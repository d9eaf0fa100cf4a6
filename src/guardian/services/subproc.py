"""Run one external command safely: argv only, a hard timeout, capped output.

Every tool Guardian drives (sc.exe, nssm.exe, systemctl, journalctl) goes through here so
the rules hold everywhere: no shell, the process is killed when the timeout passes or the
caller is cancelled (the engine cancels checks that overrun), and a chatty or hostile tool
cannot fill memory. Windows console tools print in the OEM code page, and NSSM prints
UTF-16LE when its output is a pipe, so output is decoded by :func:`decode_output`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

DEFAULT_MAX_OUTPUT = 1024 * 1024  # bytes kept per stream; the rest is read and dropped
_CHUNK = 64 * 1024


class CommandResult(NamedTuple):
    rc: int
    stdout: str
    stderr: str


async def run_command(
    argv: Sequence[str],
    *,
    timeout: float,
    max_output: int = DEFAULT_MAX_OUTPUT,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
) -> CommandResult:
    """Run ``argv`` and return its exit code and decoded output.

    Raises :class:`TimeoutError` (after killing the process) when it runs past ``timeout``,
    and :class:`OSError` (e.g. FileNotFoundError) when it cannot be started.
    """
    if not argv:
        raise ValueError("empty argv")
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=dict(env) if env is not None else None,
        cwd=Path(cwd) if cwd is not None else None,
    )
    assert proc.stdout is not None and proc.stderr is not None
    readers = [
        asyncio.ensure_future(_read_capped(proc.stdout, max_output)),
        asyncio.ensure_future(_read_capped(proc.stderr, max_output)),
    ]
    try:
        async with asyncio.timeout(timeout):
            out, err = await asyncio.gather(*readers)
            rc = await proc.wait()
    except TimeoutError:
        raise TimeoutError(f"{Path(argv[0]).name} did not finish within {timeout:g}s") from None
    finally:
        # Runs on timeout, on cancellation by the caller, and on any other error alike.
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            with contextlib.suppress(TimeoutError, ProcessLookupError):
                async with asyncio.timeout(5):
                    await proc.wait()
        for task in readers:
            task.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
    return CommandResult(rc, decode_output(out), decode_output(err))


async def _read_capped(stream: asyncio.StreamReader, limit: int) -> bytes:
    buf = bytearray()
    while True:
        chunk = await stream.read(_CHUNK)
        if not chunk:
            return bytes(buf)
        room = limit - len(buf)
        if room > 0:
            buf += chunk[:room]


def decode_output(data: bytes) -> str:
    """Decode console output whatever its encoding; newlines normalised, NULs removed.

    Order: UTF-16 (BOM, or every other byte NUL as NSSM writes it), UTF-8, then the
    Windows OEM code page (what sc.exe uses for localised messages), then latin-1 which
    never fails.
    """
    if not data:
        return ""
    text: str | None = None
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        text = data.decode("utf-16", errors="replace")
    elif _looks_utf16le(data):
        text = data[: len(data) - len(data) % 2].decode("utf-16-le", errors="replace")
    else:
        for encoding in ("utf-8", _oem_codepage()):
            if encoding is None:
                continue
            try:
                text = data.decode(encoding)
                break
            except (UnicodeDecodeError, LookupError):
                continue
        if text is None:
            text = data.decode("latin-1")
    text = text.replace("\x00", "").lstrip("\ufeff")
    # sc.exe and nssm sometimes end lines with "\r\r\n".
    return text.replace("\r\r\n", "\n").replace("\r\n", "\n").replace("\r", "\n")


def _looks_utf16le(data: bytes) -> bool:
    """ASCII text encoded as UTF-16LE has a NUL in (almost) every odd position."""
    if len(data) < 4:
        return False
    odd = data[1::2]
    return odd.count(0) >= 0.9 * len(odd) and data[0::2].count(0) < 0.5 * len(odd)


def _oem_codepage() -> str | None:
    if sys.platform != "win32":
        return None
    import ctypes

    return f"cp{ctypes.windll.kernel32.GetOEMCP()}"
