"""A real hung mount: a FUSE filesystem whose server never answers.

The kernel queues every request (``statfs`` included) until the server answers FUSE_INIT;
this one never does, so ``statvfs`` on the mount blocks in the kernel exactly as on a
FUSE mount whose statfs sleeps. Closing the ``/dev/fuse`` descriptor aborts the
connection: the stuck callers get ENOTCONN and the mount is detached. Needs Linux,
``/dev/fuse`` and the right to mount (root or CAP_SYS_ADMIN); :func:`unavailable` says
why not, for a skip.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
from collections.abc import Iterator
from pathlib import Path

MNT_DETACH = 2


def unavailable() -> str | None:
    if not sys.platform.startswith("linux"):
        return "FUSE hang needs Linux"
    if not os.path.exists("/dev/fuse"):
        return "no /dev/fuse"
    if os.geteuid() != 0:
        return "mounting needs root"
    return None


@contextlib.contextmanager
def hung_mount(path: Path) -> Iterator[Path]:
    """Mount a never-answering FUSE filesystem on ``path`` for the ``with`` block."""
    libc = ctypes.CDLL(None, use_errno=True)
    path.mkdir(parents=True, exist_ok=True)
    fd = os.open("/dev/fuse", os.O_RDWR)
    opts = f"fd={fd},rootmode=40000,user_id=0,group_id=0".encode()
    if libc.mount(b"guardian-hang", str(path).encode(), b"fuse", 0, opts) != 0:
        errno = ctypes.get_errno()
        os.close(fd)
        raise OSError(errno, f"mount fuse on {path}: {os.strerror(errno)}")
    try:
        yield path
    finally:
        os.close(fd)  # aborts the connection: every stuck statfs returns ENOTCONN
        libc.umount2(str(path).encode(), MNT_DETACH)
