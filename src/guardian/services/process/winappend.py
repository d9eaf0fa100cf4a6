"""The supervised child's log handle, append-only in the kernel on every platform.

POSIX ``O_APPEND`` is a property of the open file: every write, the child's included,
lands at the end, so a copy-truncate rotation leaves no hole. On Windows ``os.open`` with
``O_APPEND`` is only the C runtime seeking before each of *its own* writes; the kernel
handle the child inherits has ``FILE_WRITE_DATA`` and its own file position, so after a
truncate the child goes on writing at its old offset (a hole of NULs, then overwrites).
A handle opened with ``FILE_APPEND_DATA`` but without ``FILE_WRITE_DATA`` is different:
"the caller can write only to the end of the file, and any offset information about
writes to the file is ignored" (NtCreateFile documentation). ``subprocess`` duplicates
the handle for the child with the same access, so the child's writes append too.

The handle is opened non-inheritable: ``subprocess.Popen`` makes the inheritable copy
for exactly the child it starts, so no other process Guardian runs (sc.exe, taskkill)
inherits the log.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path
from typing import Protocol, cast

# winnt.h / fileapi.h values (not all are exported by ``_winapi``).
FILE_WRITE_DATA = 0x0002
FILE_APPEND_DATA = 0x0004
FILE_READ_ATTRIBUTES = 0x0080
SYNCHRONIZE = 0x00100000
FILE_SHARE_READ = 0x1
FILE_SHARE_WRITE = 0x2
FILE_SHARE_DELETE = 0x4
OPEN_ALWAYS = 4
FILE_ATTRIBUTE_NORMAL = 0x80
NULL = 0

# Append-only: no FILE_WRITE_DATA (as Rust's and Go's standard libraries open for append).
# SYNCHRONIZE and FILE_READ_ATTRIBUTES are what CreateFileW adds to every request anyway.
APPEND_ACCESS = FILE_APPEND_DATA | SYNCHRONIZE | FILE_READ_ATTRIBUTES
# Guardian copies and truncates the file and renames backups while the child holds it.
APPEND_SHARE = FILE_SHARE_READ | FILE_SHARE_WRITE | FILE_SHARE_DELETE


class WinApi(Protocol):
    """The part of CPython's ``_winapi`` used here."""

    def CreateFile(
        self,
        file_name: str,
        desired_access: int,
        share_mode: int,
        security_attributes: int,
        creation_disposition: int,
        flags_and_attributes: int,
        template_file: int,
        /,
    ) -> int: ...

    def CloseHandle(self, handle: int, /) -> None: ...


class Msvcrt(Protocol):
    """The part of ``msvcrt`` used here."""

    def open_osfhandle(self, handle: int, flags: int, /) -> int: ...


def create_file_args(path: Path) -> tuple[str, int, int, int, int, int, int]:
    """The ``CreateFile`` arguments for an append-only, shared, created-if-missing log."""
    return (
        os.fspath(path),
        APPEND_ACCESS,
        APPEND_SHARE,
        NULL,  # default security: not inheritable (see the module docstring)
        OPEN_ALWAYS,
        FILE_ATTRIBUTE_NORMAL,
        NULL,
    )


def _modules() -> tuple[WinApi, Msvcrt]:
    return (
        cast(WinApi, importlib.import_module("_winapi")),
        cast(Msvcrt, importlib.import_module("msvcrt")),
    )


def open_windows_append(
    path: Path, *, winapi: WinApi | None = None, msvcrt: Msvcrt | None = None
) -> int:
    """A C runtime fd over an append-only kernel handle on ``path`` (Windows).

    Closing the fd closes the handle. Raises :class:`OSError` as ``os.open`` would.
    """
    if winapi is None or msvcrt is None:
        winapi, msvcrt = _modules()
    handle = winapi.CreateFile(*create_file_args(path))
    try:
        return msvcrt.open_osfhandle(handle, os.O_WRONLY | os.O_APPEND)
    except BaseException:
        winapi.CloseHandle(handle)
        raise


def open_append(path: Path, mode: int) -> int:
    """An fd for a child's stdout/stderr whose every write lands at the end of ``path``.

    ``mode`` is the POSIX permission of a new file (Windows uses the directory's ACL).
    """
    if sys.platform == "win32":
        return open_windows_append(path)
    from guardian.support.safe_open import open_append as safe_append

    return safe_append(path, mode)  # never through a link planted at the name
