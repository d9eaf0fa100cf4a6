"""Cut the head off a file that another process keeps appending to, losing nothing.

Copy-truncate loses whatever the writer appends between the copy's last read and the
truncate. That window is a few syscalls, but a rotating thread that is preempted in it
(a loaded box) loses a whole time slice of output: thousands of lines from a fast writer
(bench/bench_lifecycle.py). Linux's ``fallocate(FALLOC_FL_COLLAPSE_RANGE)`` removes a
byte range from the start of a file under the inode lock that appends take too, so a
write lands either before the cut (and was copied) or after it (and stays). It needs
offsets in whole filesystem blocks and a filesystem that supports it (ext4, XFS); where
it does not, :func:`collapse_head` says so and the caller truncates as before.

Python has no binding for fallocate's mode argument, so this calls libc through ctypes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import functools
import os
import sys
from typing import Any

FALLOC_FL_COLLAPSE_RANGE = 0x08  # linux/falloc.h


@functools.cache
def _fallocate() -> Any | None:
    """libc's 64-bit-offset ``fallocate``, or None where there is none."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    except OSError:
        return None
    fn = getattr(libc, "fallocate64", None) or getattr(libc, "fallocate", None)
    if fn is None:
        return None
    if getattr(libc, "fallocate64", None) is None and ctypes.sizeof(ctypes.c_long) < 8:
        return None  # a 32-bit off_t fallocate: offsets past 2 GiB would be wrong
    fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    fn.restype = ctypes.c_int
    return fn


def block_size(fd: int) -> int:
    """The filesystem block size of the file ``fd``: the unit collapse ranges come in."""
    return max(512, os.fstatvfs(fd).f_bsize)


# errnos that mean "this filesystem or kernel never can", not "not this time"
UNSUPPORTED = frozenset({errno.EOPNOTSUPP, errno.ENOSYS, errno.ENOTTY, errno.EPERM})


def collapse_head(fd: int, length: int) -> bool:
    """Remove the first ``length`` bytes of the file ``fd`` (a multiple of its block
    size, short of its end). True when done; False when this platform has no such call.
    :class:`OSError` when the call failed (its errno in :data:`UNSUPPORTED`: it never
    will work on this file system). Nothing is changed unless it returns True."""
    fn = _fallocate()
    if fn is None or length <= 0:
        return False
    if int(fn(fd, FALLOC_FL_COLLAPSE_RANGE, 0, length)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return True
