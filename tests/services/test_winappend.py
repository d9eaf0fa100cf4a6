"""The child's log handle: append-only in the kernel (Windows arguments checked against a
fake ``_winapi``; POSIX behaviour checked for real with a child writing across a truncate)."""

from __future__ import annotations

import fcntl
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from guardian.services.process import winappend
from guardian.services.process.winappend import (
    FILE_APPEND_DATA,
    FILE_SHARE_DELETE,
    FILE_SHARE_READ,
    FILE_SHARE_WRITE,
    FILE_WRITE_DATA,
    OPEN_ALWAYS,
    create_file_args,
    open_append,
    open_windows_append,
)


class FakeWinApi:
    def __init__(self, fail: OSError | None = None) -> None:
        self.created: list[tuple[object, ...]] = []
        self.closed: list[int] = []
        self.fail = fail

    def CreateFile(self, *args: object) -> int:
        self.created.append(args)
        if self.fail is not None:
            raise self.fail
        return 0x1F4

    def CloseHandle(self, handle: int) -> None:
        self.closed.append(handle)


class FakeMsvcrt:
    def __init__(self, fail: bool = False) -> None:
        self.wrapped: list[tuple[int, int]] = []
        self.fail = fail

    def open_osfhandle(self, handle: int, flags: int) -> int:
        self.wrapped.append((handle, flags))
        if self.fail:
            raise OSError(24, "Too many open files")
        return 7


def test_create_file_arguments_are_append_only_shared_and_create_if_missing(tmp_path):
    name, access, share, security, disposition, _attrs, template = create_file_args(
        tmp_path / "comfy.log"
    )
    assert name == str(tmp_path / "comfy.log")
    assert access & FILE_APPEND_DATA
    # The point of it all: without FILE_WRITE_DATA the kernel ignores the write offset.
    assert not access & FILE_WRITE_DATA
    assert not access & 0x40000000  # nor GENERIC_WRITE, which implies FILE_WRITE_DATA
    assert share == FILE_SHARE_READ | FILE_SHARE_WRITE | FILE_SHARE_DELETE
    assert disposition == OPEN_ALWAYS  # a missing log is created, an existing one kept
    assert (security, template) == (0, 0)


def test_open_windows_append_wraps_the_handle_in_a_crt_fd(tmp_path):
    api, crt = FakeWinApi(), FakeMsvcrt()
    fd = open_windows_append(tmp_path / "a.log", winapi=api, msvcrt=crt)
    assert fd == 7
    assert api.created == [create_file_args(tmp_path / "a.log")]
    assert crt.wrapped == [(0x1F4, os.O_WRONLY | os.O_APPEND)]
    assert api.closed == []  # the fd owns the handle now


def test_handle_is_closed_when_it_cannot_become_an_fd(tmp_path):
    api, crt = FakeWinApi(), FakeMsvcrt(fail=True)
    with pytest.raises(OSError, match="Too many open files"):
        open_windows_append(tmp_path / "a.log", winapi=api, msvcrt=crt)
    assert api.closed == [0x1F4]


def test_create_file_error_propagates_as_oserror(tmp_path):
    api, crt = FakeWinApi(fail=PermissionError(13, "Access is denied")), FakeMsvcrt()
    with pytest.raises(PermissionError):
        open_windows_append(tmp_path / "a.log", winapi=api, msvcrt=crt)
    assert crt.wrapped == [] and api.closed == []


def test_open_append_takes_the_windows_path_on_windows(tmp_path, monkeypatch):
    api, crt = FakeWinApi(), FakeMsvcrt()
    monkeypatch.setattr(winappend, "_modules", lambda: (api, crt))
    monkeypatch.setattr(winappend.sys, "platform", "win32")  # type: ignore[attr-defined]
    assert open_append(tmp_path / "w.log", 0o640) == 7
    assert api.created[0][1] & FILE_APPEND_DATA  # type: ignore[operator]
    assert not (tmp_path / "w.log").exists()  # nothing went through os.open


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX behaviour")
def test_posix_fd_is_o_append_with_private_mode(tmp_path):
    path = tmp_path / "sub.log"
    fd = open_append(path, 0o640)
    try:
        assert fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_APPEND
        assert stat.S_IMODE(path.stat().st_mode) & 0o007 == 0
    finally:
        os.close(fd)


def _wait_size(path: Path, size: int) -> None:
    deadline = time.monotonic() + 10
    while path.stat().st_size != size:
        assert time.monotonic() < deadline, f"{path} has {path.stat().st_size} bytes"
        time.sleep(0.005)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX behaviour")
def test_running_child_writes_at_the_end_after_copy_truncate(tmp_path):
    """What rotation relies on: a child holding the fd writes at offset 0 after a truncate
    (a position-keeping handle would leave a hole of NULs first)."""
    path = tmp_path / "child.log"
    fd = open_append(path, 0o640)
    echo = (
        "import sys\n"
        "for line in sys.stdin:\n"
        "    sys.stdout.write(line * 50)\n"
        "    sys.stdout.flush()\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", echo], stdin=subprocess.PIPE, stdout=fd, text=True
    )
    os.close(fd)
    try:
        assert child.stdin is not None
        child.stdin.write("before\n")
        child.stdin.flush()
        _wait_size(path, 50 * 7)
        with open(path, "r+b") as f:
            f.truncate(0)
        child.stdin.write("after\n")
        child.stdin.flush()
        _wait_size(path, 50 * 6)
        assert path.read_bytes() == b"after\n" * 50
    finally:
        child.kill()
        child.wait()
