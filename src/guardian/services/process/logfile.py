"""The supervised process's log file: the child writes it, Guardian rotates and tails it.

The child gets the file itself as stdout/stderr, opened with ``O_APPEND``, not a pipe: a
pipe dies with Guardian (the child then gets SIGPIPE or blocks), a file does not, so lines
written while no Guardian runs are still there for the next one's report. ``O_APPEND``
makes every write land at the current end, which is what lets Guardian rotate under a
running writer without its help: copy the file to ``.1`` and cut what was copied off
its head (:mod:`guardian.services.process.collapse`, atomic with the child's appends), or where
the filesystem cannot, truncate it to zero; either way the child's next write lands in
the new file (no hole, no reopen needed). Guardian's own marker lines (start, adopt,
exit) go into the same file through their own append handle.

``tail`` reads backwards from the end in blocks, so a 10 MB log costs a few KB of I/O, and
continues into the newest rotated file when the current one is too short.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import BinaryIO

from guardian.services.process.collapse import UNSUPPORTED, block_size, collapse_head
from guardian.services.process.winappend import open_append
from guardian.support.safe_open import open_beside, temp_name

TAIL_BLOCK = 8192
COPY_BLOCK = 1024 * 1024
LOG_MODE = 0o640  # the child's output can hold paths and prompts: not world-readable

log = logging.getLogger("guardian.services.process.logfile")


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
        # Whether fallocate(COLLAPSE_RANGE) works here: None until first tried.
        self.collapse: bool | None = None
        self._write_failed = False  # warn once per outage, not once per line

    def open_for_child(self) -> int:
        """A new ``O_APPEND`` fd on the file, for the child's stdout and stderr.

        The caller closes it once the child is spawned (the child keeps its own copy).
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        return open_append(self.path, LOG_MODE)  # Windows: an append-only kernel handle

    def write_line(self, text: str) -> bool:
        """Append one line in one ``write`` (so it never splits a child's line). True when
        written; a failure (full disk, removed dir) is logged once until writing works."""
        data = (text.rstrip("\n") + "\n").encode("utf-8", errors="replace")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = open_beside(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, LOG_MODE)
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
        """Rotate once the file has reached ``max_bytes``. True when it rotated.

        Blocking file I/O: call it from a worker thread. Where the filesystem can cut a
        file's head (ext4, XFS) nothing the child writes is lost; elsewhere copy-truncate
        copies until it catches up with the end, and what lands between the last read and
        the truncate is lost: a few syscalls, or a whole time slice when this thread is
        preempted there (bench/bench_lifecycle.py measures both).
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
            fd = open_beside(self.path, os.O_WRONLY)
            try:
                os.ftruncate(fd, 0)
            finally:
                os.close(fd)
            return
        oldest = rotated_name(self.path, self.backups)
        oldest.unlink(missing_ok=True)
        for i in range(self.backups - 1, 0, -1):
            src = rotated_name(self.path, i)
            if src.exists():
                os.replace(src, rotated_name(self.path, i + 1))
        # Never through a link: an unguessable O_EXCL temp name, the log opened O_NOFOLLOW.
        tmp = self.path.with_name(temp_name(self.path))
        src_fd = open_beside(self.path, os.O_RDWR)
        dst_fd = open_beside(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, LOG_MODE)
        with open(src_fd, "r+b") as src_fh, open(dst_fd, "wb") as dst:
            if not self._copy_collapse(src_fh, dst):
                shutil.copyfileobj(src_fh, dst, COPY_BLOCK)
                while chunk := src_fh.read(COPY_BLOCK):  # written while we copied
                    dst.write(chunk)
                src_fh.truncate(0)
        os.replace(tmp, rotated_name(self.path, 1))

    def _copy_collapse(self, src: BinaryIO, dst: BinaryIO) -> bool:
        """Copy the file's whole blocks to ``dst`` and cut them off its head (see
        :mod:`guardian.services.process.collapse`): nothing the child appends meanwhile is lost.
        The last partial block (under one block) stays and starts the new file, so a
        line can be split between ``.1`` and the file (:func:`tail_rotated` joins it).
        False, with ``src`` back at the start and ``dst`` empty, where collapsing cannot
        be done (the caller copies and truncates then)."""
        if self.collapse is False:
            return False
        fd = src.fileno()
        try:
            block = block_size(fd)
        except OSError:
            return False
        cut = os.fstat(fd).st_size // block * block
        if cut >= os.fstat(fd).st_size:
            cut -= block  # the range may not reach the end of the file
        if cut <= 0:
            return False
        left = cut
        while left > 0:
            chunk = src.read(min(COPY_BLOCK, left))
            if not chunk:
                break
            dst.write(chunk)
            left -= len(chunk)
        dst.flush()
        why = "it has no fallocate"
        try:
            if left == 0 and collapse_head(fd, cut):
                self.collapse = True
                return True
        except OSError as exc:
            why = exc.strerror or str(exc)
            if exc.errno not in UNSUPPORTED:
                why = ""  # this time only (the file changed under us): truncate once
        if why and self.collapse is None:
            log.info(
                "%s: cannot cut the head off this file (fallocate collapse range: %s); "
                "rotating by copy-truncate, which can lose lines written during the cut",
                self.path,
                why,
                extra={"event": "log_rotate_truncate"},
            )
        if why:
            self.collapse = False
        src.seek(0)
        dst.seek(0)
        dst.truncate(0)
        return False

    def tail(self, lines: int) -> list[str]:
        return tail_rotated(self.path, self.backups, lines)


def tail_rotated(path: Path, backups: int, lines: int) -> list[str]:
    """The last ``lines`` lines of ``path``, continuing into ``path.1``... when it is short.

    A line cut between two files by a rotation is joined again. One line more than asked
    is gathered and dropped at the end: the first line of a file can be the rest of a cut
    one, and only a line from the file before it makes it whole.
    """
    if lines <= 0:
        return []
    want = lines + 1
    out = tail_file(path, want)
    newer = path
    index = 1
    while len(out) < want and index <= backups:
        older = rotated_name(path, index)
        if not older.exists():
            break
        need = want - len(out)
        more = tail_file(older, need + 1)
        if more and out and _starts_mid_line(older, newer):
            out[0] = more.pop() + out[0]  # a line cut at the rotation: one line again
        out = more[-need:] + out if more else out
        newer = older
        index += 1
    return out[-lines:]


def _starts_mid_line(older: Path, newer: Path) -> bool:
    """Whether ``newer`` continues ``older``'s last line (a rotation that cut the file
    at a block edge leaves the line's head in ``older`` without its newline)."""
    try:
        with open(older, "rb") as fh:
            fh.seek(-1, os.SEEK_END)
            last = fh.read(1)
        with open(newer, "rb") as fh:
            first = fh.read(1)
    except OSError:
        return False
    return last != b"\n" and first != b""


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
