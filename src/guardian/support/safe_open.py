"""Opening files where Guardian writes, without following a link someone planted.

A root Guardian that opens ``<log_dir>/guardian.log`` by name writes wherever a symlink
at that name points (``/etc/...``). Every file Guardian writes is therefore opened here:
relative to its opened directory, with ``O_NOFOLLOW`` (a link at the name is refused, not
followed), close-on-exec, and never a file with a second hard link (a link to a file
elsewhere). Files written whole go to an unpredictable temporary name created with
``O_EXCL`` and are renamed within the same directory; modes are set on the descriptor,
never on a path. Windows has no symlink planting by unprivileged users in Guardian's own
directories (they inherit its ACL); there the plain calls are used.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from pathlib import Path

NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
CLOEXEC = getattr(os, "O_CLOEXEC", 0)
BINARY = getattr(os, "O_BINARY", 0)
DIRECTORY = getattr(os, "O_DIRECTORY", 0)
DIR_FD = os.open in os.supports_dir_fd and DIRECTORY != 0


def _open_dir(directory: Path) -> int:
    return os.open(directory, os.O_RDONLY | DIRECTORY | CLOEXEC)


def _check_regular(fd: int, path: Path) -> None:
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise OSError(errno.EINVAL, "not a regular file", str(path))
    if st.st_nlink > 1:
        raise OSError(errno.EMLINK, "file has other hard links: not writing through them",
                      str(path))


def open_beside(path: Path, flags: int, mode: int = 0o600) -> int:
    """``os.open`` of ``path`` relative to its opened directory, never through a link.

    A symlink at ``path`` fails with ``ELOOP``; a non-regular file or one with more than
    one hard link with ``EINVAL``/``EMLINK``. Returns the descriptor (close-on-exec).
    """
    flags |= NOFOLLOW | CLOEXEC | BINARY
    if not DIR_FD:
        fd = os.open(path, flags, mode)
    else:
        dfd = _open_dir(path.parent)
        try:
            fd = os.open(path.name, flags, mode, dir_fd=dfd)
        finally:
            os.close(dfd)
    try:
        _check_regular(fd, path)
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_append(path: Path, mode: int = 0o600) -> int:
    """An ``O_APPEND`` descriptor on ``path`` (created with ``mode``), never through a link."""
    return open_beside(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, mode)


def make_private(path: Path, mode: int = 0o600) -> None:
    """Narrow an existing file to ``mode`` through a no-follow descriptor: a symlink planted
    at ``path`` is refused (``ELOOP``), never chmod-ed through to its target."""
    fd = open_beside(path, os.O_RDONLY)
    try:
        os.fchmod(fd, mode)
    finally:
        os.close(fd)


def temp_name(path: Path) -> str:
    """An unguessable temporary name beside ``path``: nobody can plant a link there first."""
    return f".{path.name}.{secrets.token_hex(8)}.tmp"


def write_atomic(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data``: a fresh ``O_EXCL`` temp file, renamed in its directory.

    A link planted at ``path`` is replaced (the link, never its target); the new file has
    ``mode`` from its first byte on.
    """
    tmp = temp_name(path)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | NOFOLLOW | CLOEXEC | BINARY
    if not DIR_FD:
        tmp_path = path.with_name(tmp)
        fd = os.open(tmp_path, flags, mode)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp_path, path)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp_path.unlink()
            raise
        return
    dfd = _open_dir(path.parent)
    try:
        fd = os.open(tmp, flags, mode, dir_fd=dfd)
        try:
            with os.fdopen(fd, "wb") as fh:
                os.fchmod(fh.fileno(), mode)  # the umask may have narrowed or widened nothing
                fh.write(data)
            os.replace(tmp, path.name, src_dir_fd=dfd, dst_dir_fd=dfd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dfd)
            raise
    finally:
        os.close(dfd)


def write_atomic_text(path: Path, text: str, mode: int = 0o600) -> None:
    write_atomic(path, text.encode("utf-8"), mode)
