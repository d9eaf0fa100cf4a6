"""The store lock's Windows branch (``msvcrt.locking``), run here on a real byte-range lock.

``msvcrt`` exists only on Windows, so its stand-in here takes the same calls and does
what Windows does with them on a POSIX record lock (``fcntl.lockf``): ``nbytes`` from the
file's current position, non-blocking, ``OSError(EACCES)`` when another process holds
the range. The branch's own logic is what runs: its selection on ``sys.platform``, the
lock placed past the pid text, the error mapping, and a second process refused with
the holder's pid, then let in once the holder is gone.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

from guardian.store import lock
from guardian.support.safe_open import open_beside

pytestmark = pytest.mark.skipif(os.name != "posix", reason="the stand-in uses POSIX record locks")

FAKE = '''
import errno, fcntl, os

class RecordLockMsvcrt:
    """msvcrt.locking's LK_NBLCK on a POSIX record lock."""
    LK_NBLCK = 2
    LK_UNLCK = 0

    def __init__(self):
        self.calls = []

    def locking(self, fd, mode, nbytes):
        self.calls.append((mode, os.lseek(fd, 0, os.SEEK_CUR), nbytes))
        if mode != self.LK_NBLCK:
            raise OSError(errno.EINVAL, "mode not supported by the stand-in")
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, nbytes, 0, os.SEEK_CUR)
        except OSError as e:  # Windows says EACCES for a range another process holds
            raise OSError(errno.EACCES, "Permission denied") from e
'''

HOLDER = FAKE + '''
import sys
sys.platform = "win32"
sys.modules["msvcrt"] = RecordLockMsvcrt()
from pathlib import Path
from guardian.store import lock
held = lock.acquire(Path(sys.argv[1]))
print("held", flush=True)
sys.stdin.readline()
held.release()
'''


def fake_msvcrt() -> types.ModuleType:
    mod = types.ModuleType("msvcrt")
    exec(FAKE, mod.__dict__)
    instance: types.ModuleType = mod.RecordLockMsvcrt()
    return instance


@pytest.fixture
def windows(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    """This process takes the Windows branch, with the stand-in as ``msvcrt``."""
    fake = fake_msvcrt()
    monkeypatch.setattr(sys, "platform", "win32")
    monkeypatch.setitem(sys.modules, "msvcrt", fake)
    return fake


def test_the_windows_branch_locks_one_byte_past_the_pid(
    tmp_path: Path, windows: types.ModuleType
) -> None:
    held = lock.acquire(tmp_path / "g.db")
    try:
        assert windows.calls == [(windows.LK_NBLCK, lock._WIN_LOCK_OFFSET, 1)]  # type: ignore[attr-defined]
        text = lock.lock_path_for((tmp_path / "g.db").resolve()).read_text()
        assert text == f"{os.getpid()}\n"
        assert len(text) < lock._WIN_LOCK_OFFSET  # the pid stays readable to a second one
    finally:
        held.release()


def test_a_second_process_is_refused_with_the_holders_pid_then_let_in(
    tmp_path: Path, windows: types.ModuleType
) -> None:
    store = tmp_path / "g.db"
    src = Path(lock.__file__).resolve().parents[2]
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(store)], stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(src)})
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        with pytest.raises(lock.AlreadyRunning) as refused:
            lock.acquire(store)
        assert refused.value.pid == holder.pid
        assert f"pid {holder.pid}" in str(refused.value)
        assert holder.stdin is not None
        holder.stdin.write("go\n")
        holder.stdin.flush()
        assert holder.wait(30) == 0
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
    mine = lock.acquire(store)  # the holder is gone: the range is free again
    try:
        assert mine.held
        assert lock.lock_path_for(store.resolve()).read_text() == f"{os.getpid()}\n"
    finally:
        mine.release()


@pytest.mark.parametrize("code", [errno.EACCES, errno.EDEADLK, 36])
def test_windows_lock_errors_that_mean_held(tmp_path: Path, code: int) -> None:
    class Held:
        LK_NBLCK = 2

        def locking(self, fd: int, mode: int, nbytes: int, /) -> None:
            raise OSError(code, "locked")

    fd = os.open(tmp_path / "f.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        assert lock._try_lock_windows(fd, Held()) is False
    finally:
        os.close(fd)


def test_any_other_windows_error_is_raised_not_taken_for_a_running_guardian(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Broken:
        LK_NBLCK = 2

        def locking(self, fd: int, mode: int, nbytes: int, /) -> None:
            raise OSError(errno.EBADF, "Bad file descriptor")

    monkeypatch.setattr(sys, "platform", "win32")
    monkeypatch.setitem(sys.modules, "msvcrt", Broken())
    opened: list[int] = []
    real_open = open_beside

    def tracked(path: Path, flags: int, mode: int) -> int:
        fd = real_open(path, flags, mode)
        opened.append(fd)
        return fd

    monkeypatch.setattr("guardian.store.lock.open_beside", tracked)
    with pytest.raises(OSError) as failed:
        lock.acquire(tmp_path / "g.db")
    assert not isinstance(failed.value, lock.AlreadyRunning)
    assert failed.value.errno == errno.EBADF
    assert len(opened) == 1
    with pytest.raises(OSError):  # the descriptor was closed, not leaked
        os.fstat(opened[0])


def test_posix_branch_still_refuses_a_second_holder(tmp_path: Path) -> None:
    """The same seam off Windows: flock, and a second descriptor is refused."""
    path = tmp_path / "f.lock"
    a = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    b = os.open(path, os.O_RDWR)
    try:
        assert lock._try_lock_posix(a) is True
        assert lock._try_lock_posix(b) is False  # flock: per open file, even in one process
    finally:
        os.close(a)
        os.close(b)
