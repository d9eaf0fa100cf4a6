"""What can go wrong with Guardian's SQLite file, as exceptions and as kinds of trouble.

Apart from :mod:`guardian.store.db` so the component block (:mod:`guardian.store.component`)
and every store raise and catch the same classes without importing the database owner.
"""

from __future__ import annotations

import errno
import sqlite3
from typing import Literal

# Primary SQLite result codes (extended codes carry them in the low byte).
SQLITE_BUSY = 5
SQLITE_LOCKED = 6
SQLITE_IOERR = 10
SQLITE_CORRUPT = 11
SQLITE_FULL = 13
SQLITE_CANTOPEN = 14
SQLITE_NOTADB = 26

ErrorKind = Literal["damaged", "full", "io", "busy", "other"]


class StoreError(Exception):
    """The store cannot do what was asked (unusable file, refused schema, failed write)."""


class StoreDamaged(StoreError):
    """The file is not a usable SQLite database (raised where recovery is off)."""


class StoreNewer(StoreError):
    """A component's schema in the file is newer than this Guardian knows."""


class StoreUnavailable(StoreError):
    """This operation could not be done now (disk full, I/O error, locked); nothing broke."""


def classify(exc: BaseException) -> ErrorKind:
    """What kind of trouble an exception from sqlite3 (or the OS) is."""
    if isinstance(exc, OSError):
        return "full" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else "io"
    if not isinstance(exc, sqlite3.Error):
        return "other"
    code = getattr(exc, "sqlite_errorcode", None)
    primary = code & 0xFF if isinstance(code, int) else None
    text = str(exc).lower()
    if primary in (SQLITE_CORRUPT, SQLITE_NOTADB) or "malformed" in text:
        return "damaged"
    if "not a database" in text:
        return "damaged"
    if primary == SQLITE_FULL or "disk is full" in text:
        return "full"
    if primary == SQLITE_IOERR or "disk i/o error" in text:
        return "io"
    if primary in (SQLITE_BUSY, SQLITE_LOCKED) or "locked" in text:
        return "busy"
    return "other"


def describe(kind: ErrorKind, exc: BaseException) -> str:
    label = {"full": "disk full", "io": "I/O error", "busy": "database locked"}.get(kind, kind)
    return f"{label} ({exc})"
