"""Where a supervised child's stdout/stderr goes: a size-rotated file, or a ring in memory.

Lines are written as they arrive (one ``write`` + ``flush`` per chunk) so an incident report
taken a second after a crash still shows the child's last words. ``tail`` reads backwards
from the end of the file in blocks, so a 10 MB log costs a few KB of I/O, and continues into
the newest rotated file when the current one is too short.
"""

from __future__ import annotations

import os
from collections import deque
from pathlib import Path
from typing import BinaryIO, Protocol

TAIL_BLOCK = 8192
MEMORY_LINES = 1000


class LogSink(Protocol):
    def write(self, data: bytes) -> None: ...

    def tail(self, lines: int) -> list[str]: ...

    def close(self) -> None: ...


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", errors="replace").rstrip("\r")


class MemoryLog:
    """The last ``capacity`` lines, for processes configured without a log file."""

    def __init__(self, capacity: int = MEMORY_LINES) -> None:
        self._lines: deque[str] = deque(maxlen=capacity)
        self._partial = b""

    def write(self, data: bytes) -> None:
        data = self._partial + data
        *complete, self._partial = data.split(b"\n")
        for raw in complete:
            self._lines.append(_decode(raw))

    def tail(self, lines: int) -> list[str]:
        if lines <= 0:
            return []
        out = list(self._lines)[-lines:]
        if self._partial:
            out = [*out, _decode(self._partial)][-lines:]
        return out

    def close(self) -> None:
        """Nothing to release; kept for the LogSink protocol."""


def rotated_name(path: Path, index: int) -> Path:
    """``app.log`` -> ``app.log.1`` (newest backup) ... ``app.log.N`` (oldest)."""
    return path.with_name(f"{path.name}.{index}")


class RotatingLog:
    """Appends to ``path``; when it would exceed ``max_bytes`` it shifts to ``path.1`` etc.

    Rotation happens at line breaks where possible; with ``backups == 0`` the file is
    simply truncated.
    """

    def __init__(self, path: Path, max_bytes: int, backups: int) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.backups = backups
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh: BinaryIO | None = open(self.path, "ab")  # noqa: SIM115 - long-lived handle
        self._size = self._fh.tell()

    def write(self, data: bytes) -> None:
        """Append ``data``, rotating so no file grows past ``max_bytes``.

        A pipe read can return up to 64 KiB at once when the child is fast, so a chunk is
        split, at a line break where one fits, rather than overshooting the limit.
        """
        while data and self._fh is not None:
            room = self.max_bytes - self._size
            if room <= 0 or (self._size > 0 and len(data) > room and b"\n" not in data[:room]):
                self._rotate()
                continue
            if len(data) <= room:
                piece, data = data, b""
            else:
                cut = data.rfind(b"\n", 0, room) + 1 or room
                piece, data = data[:cut], data[cut:]
            self._fh.write(piece)
            self._size += len(piece)
        if self._fh is not None:
            self._fh.flush()

    def _rotate(self) -> None:
        assert self._fh is not None
        self._fh.close()
        if self.backups > 0:
            oldest = rotated_name(self.path, self.backups)
            if oldest.exists():
                oldest.unlink()
            for i in range(self.backups - 1, 0, -1):
                src = rotated_name(self.path, i)
                if src.exists():
                    os.replace(src, rotated_name(self.path, i + 1))
            os.replace(self.path, rotated_name(self.path, 1))
        self._fh = open(self.path, "wb")  # noqa: SIM115
        self._size = 0

    def tail(self, lines: int) -> list[str]:
        return tail_rotated(self.path, self.backups, lines)

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def tail_rotated(path: Path, backups: int, lines: int) -> list[str]:
    """The last ``lines`` lines of ``path``, continuing into ``path.1``... when it is short."""
    if lines <= 0:
        return []
    out = tail_file(path, lines)
    index = 1
    while len(out) < lines and index <= backups:
        older = rotated_name(path, index)
        if not older.exists():
            break
        out = tail_file(older, lines - len(out)) + out
        index += 1
    return out


def tail_file(path: Path, lines: int) -> list[str]:
    """The last ``lines`` lines of ``path``, read backwards in blocks; [] if it is missing."""
    if lines <= 0:
        return []
    try:
        fh = open(path, "rb")  # noqa: SIM115
    except OSError:
        return []
    with fh:
        fh.seek(0, os.SEEK_END)
        pos = fh.tell()
        buf = b""
        # lines + 1 newlines guarantee `lines` complete lines (the file may end with "\n").
        while pos > 0 and buf.count(b"\n") <= lines:
            step = min(TAIL_BLOCK, pos)
            pos -= step
            fh.seek(pos)
            buf = fh.read(step) + buf
    if buf.endswith(b"\n"):
        buf = buf[:-1]
    if not buf:
        return []
    return [_decode(raw) for raw in buf.split(b"\n")[-lines:]]
