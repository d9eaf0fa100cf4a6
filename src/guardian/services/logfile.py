"""The supervised process's log file: the child writes it, Guardian rotates and tails it.

The child gets the file itself as stdout/stderr, opened with ``O_APPEND``, not a pipe: a
pipe dies with Guardian (the child then gets SIGPIPE or blocks), a file does not, so lines
written while no Guardian runs are still there for the next one's report. ``O_APPEND``
makes every write land at the current end, which is what lets Guardian rotate by
copy-truncate under a running writer: copy the file to ``.1``, truncate it to zero, and
the child's next write starts the new file (no hole, no reopen needed). Guardian's own
marker lines (start, adopt, exit) go into the same file through their own append handle.

``tail`` reads backwards from the end in blocks, so a 10 MB log costs a few KB of I/O, and
continues into the newest rotated file when the current one is too short.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

TAIL_BLOCK = 8192
COPY_BLOCK = 1024 * 1024
LOG_MODE = 0o640  # the child's output can hold paths and prompts: not world-readable

log = logging.getLogger("guardian.services.logfile")


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", errors="replace").rstrip("\r")


def rotated_name(path: Path, index: int) -> Path:
    """``app.log`` -> ``app.log.1`` (newest backup) ... ``app.log.N`` (oldest)."""
    return path.with_name(f"{path.name}.{index}")


class SupervisedLog:
    """One supervised process's log: child fds, marker lines, copy-truncate rotation."""

    def __init__(self, path: Path, max_bytes: int, backups: int) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.backups = backups
        self.rotations = 0
        self._write_failed = False  # warn once per outage, not once per line

    def open_for_child(self) -> int:
        """A new ``O_APPEND`` fd on the file, for the child's stdout and stderr.

        The caller closes it once the child is spawned (the child keeps its own copy).
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, LOG_MODE)

    def write_line(self, text: str) -> bool:
        """Append one line in one ``write`` (so it never splits a child's line). True when
        written; a failure (full disk, removed dir) is logged once until writing works."""
        data = (text.rstrip("\n") + "\n").encode("utf-8", errors="replace")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, LOG_MODE)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)
        except OSError as exc:
            if not self._write_failed:
                log.warning(
                    "cannot write to %s: %s", self.path, exc, extra={"event": "log_write_failed"}
                )
            self._write_failed = True
            return False
        self._write_failed = False
        return True

    def size(self) -> int:
        try:
            return self.path.stat().st_size
        except OSError:
            return 0

    def rotate_if_needed(self) -> bool:
        """Copy-truncate once the file has reached ``max_bytes``. True when it rotated.

        Blocking file I/O: call it from a worker thread. What the child writes while the
        copy runs is copied too (the copy reads until it catches up with the end); only
        a write landing between the last read and the truncate is lost, a window of
        microseconds (bench/bench_lifecycle.py measures it).
        """
        if self.size() < self.max_bytes:
            return False
        try:
            self._copy_truncate()
        except OSError as exc:
            log.warning(
                "cannot rotate %s: %s", self.path, exc, extra={"event": "log_rotate_failed"}
            )
            return False
        self.rotations += 1
        return True

    def rotate_and_size(self) -> tuple[int, int]:
        """:meth:`rotate_if_needed`, returning the size seen and the size left after it
        (the same when it did not rotate), for pacing the next check."""
        seen = self.size()
        if seen < self.max_bytes or not self.rotate_if_needed():
            return seen, seen
        return seen, self.size()

    def _copy_truncate(self) -> None:
        if self.backups == 0:
            os.truncate(self.path, 0)
            return
        oldest = rotated_name(self.path, self.backups)
        oldest.unlink(missing_ok=True)
        for i in range(self.backups - 1, 0, -1):
            src = rotated_name(self.path, i)
            if src.exists():
                os.replace(src, rotated_name(self.path, i + 1))
        tmp = self.path.with_name(self.path.name + ".rotating")
        with open(self.path, "r+b") as src_fh, open(tmp, "wb") as dst:
            os.chmod(tmp, LOG_MODE)
            shutil.copyfileobj(src_fh, dst, COPY_BLOCK)
            while chunk := src_fh.read(COPY_BLOCK):  # written while we copied
                dst.write(chunk)
            src_fh.truncate(0)
        os.replace(tmp, rotated_name(self.path, 1))

    def tail(self, lines: int) -> list[str]:
        return tail_rotated(self.path, self.backups, lines)


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
