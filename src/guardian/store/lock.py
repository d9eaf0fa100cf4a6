"""One Guardian per store: an exclusive lock on a file beside the store, like a pidfile lock.

Two Guardians on one config would both adopt the same children and both restart them (a
crash loop, an open breaker), and stopping one would kill the other's service. So the
first one takes an exclusive, non-blocking lock on ``<store>.lock`` before it adopts or
starts anything; a second one finds it held and stops at once, naming the holder's pid,
without touching a file. The kernel drops the lock when the holder dies (SIGKILL, OOM
included), so a crash never leaves a stale lock behind: the pid written in the file is
only ever information, never the lock itself.

The lock's descriptor is close-on-exec, so a supervised child left running
(``on_guardian_stop = "leave"``) never inherits it and never blocks the next Guardian.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys
import threading
from pathlib import Path
from typing import Protocol

from guardian.support.safe_open import open_beside

LOCK_SUFFIX = ".lock"
_WIN_LOCK_OFFSET = 1 << 20  # Windows locks a byte range: lock one far past the pid text


class AlreadyRunning(Exception):
    """Another live process holds the store's lock."""

    def __init__(self, lock_path: Path, pid: int | None) -> None:
        self.lock_path = lock_path
        self.pid = pid
        who = f"pid {pid}" if pid else "another process"
        super().__init__(
            f"another Guardian ({who}) already runs on this store (lock {lock_path} is held);"
            " stop it first, or give this one its own state_dir / [store] path"
        )


def lock_path_for(store_path: Path) -> Path:
    return store_path.with_name(store_path.name + LOCK_SUFFIX)


class StoreLock:
    """A held lock; :meth:`release` (or process death) frees it."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd
        self._holds = 1

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        with _HELD_LOCK:
            self._holds -= 1
            if self._holds > 0 or self._fd is None:
                return
            fd, self._fd = self._fd, None
            _HELD.pop(self.path, None)
        with contextlib.suppress(OSError):
            os.close(fd)  # closing the descriptor drops the lock


_HELD: dict[Path, StoreLock] = {}
_HELD_LOCK = threading.Lock()


def acquire(store_path: Path) -> StoreLock:
    """Take the store's lock, or raise :class:`AlreadyRunning` naming the holder.

    Taken again by the process that holds it, it is counted (each :meth:`release` undoes
    one): ``guardian demo`` takes it before writing its config, then runs Guardian, which
    takes it again.
    """
    path = lock_path_for(store_path.resolve())
    with _HELD_LOCK:
        mine = _HELD.get(path)
        if mine is not None and mine.held:
            mine._holds += 1
            return mine
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = open_beside(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if not _try_lock(fd):
                holder = _read_pid(fd)
                raise AlreadyRunning(path, holder)
            _write_pid(fd)
        except BaseException:
            os.close(fd)
            raise
        lock = StoreLock(path, fd)
        _HELD[path] = lock
        return lock


class _Msvcrt(Protocol):
    """What the Windows branch uses of ``msvcrt`` (a seam: tests give a real byte-range
    lock behind the same calls)."""

    LK_NBLCK: int

    def locking(self, fd: int, mode: int, nbytes: int, /) -> None: ...


# Windows reports a byte range locked by another process as EACCES (or EDEADLOCK, 36);
# anything else (a bad descriptor, no lock support) is an error, not "already running".
_WIN_HELD = frozenset({errno.EACCES, errno.EDEADLK, 36})  # 36: EDEADLOCK on Windows
_POSIX_HELD = frozenset({errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES})


def _try_lock(fd: int) -> bool:
    if sys.platform == "win32":
        import msvcrt

        return _try_lock_windows(fd, msvcrt)
    return _try_lock_posix(fd)


def _try_lock_windows(fd: int, msvcrt: _Msvcrt) -> bool:
    """One byte far past the pid text: Windows locks are mandatory, so locking the text
    itself would keep a second Guardian from reading whose lock it is."""
    os.lseek(fd, _WIN_LOCK_OFFSET, os.SEEK_SET)
    try:
        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
    except OSError as e:
        if e.errno in _WIN_HELD:
            return False
        raise
    return True


def _try_lock_posix(fd: int) -> bool:
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno in _POSIX_HELD:
            return False
        raise
    return True


def _read_pid(fd: int) -> int | None:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        text = os.read(fd, 32).decode("ascii", "replace").strip()
        return int(text) if text.isdigit() else None
    except (OSError, ValueError):
        return None


def _write_pid(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, f"{os.getpid()}\n".encode("ascii"))
