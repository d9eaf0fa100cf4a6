"""Read-only connections to the store's file, one per thread that reads.

Why per thread: with one shared reader, the event loop's short read (an incident for a
report, a notification already sent?) would wait behind the API thread's long uptime
aggregation holding it. Each thread gets its own ``mode=ro`` / ``query_only`` connection,
so a read waits for nothing but its own query: never for the writer's lock (the writer
thread may be sitting in a busy wait for another process's lock), never for another
reader. In WAL mode a reader does not wait for any writer, Guardian's or another
process's. Connections are reopened when the file was replaced (``generation``) and all
closed with the Database.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import weakref
from pathlib import Path


class _Slot:
    """One thread's connection, its generation and the lock close() takes."""

    def __init__(self) -> None:
        self.conn: sqlite3.Connection | None = None
        self.generation = -1
        self.lock = threading.Lock()


class Readers:
    """Per-thread read-only connections to ``path``."""

    def __init__(self, path: Path, timeout: float) -> None:
        self.path = path
        self.timeout = timeout
        self._local = threading.local()
        # Weak: a thread that ends (a pool's worker) takes its slot and connection along.
        self._all: weakref.WeakSet[_Slot] = weakref.WeakSet()
        self._all_lock = threading.Lock()

    def slot(self) -> _Slot:
        """This thread's slot (made on first use); hold ``slot.lock`` while using it."""
        slot: _Slot | None = getattr(self._local, "slot", None)
        if slot is None:
            slot = _Slot()
            self._local.slot = slot
            with self._all_lock:
                self._all.add(slot)
        return slot

    def connection(self, slot: _Slot, generation: int) -> sqlite3.Connection:
        """``slot``'s connection to the current file (opened now if it has none)."""
        if slot.conn is not None and slot.generation == generation:
            return slot.conn
        self.drop(slot)
        conn = sqlite3.connect(
            self.path.resolve().as_uri() + "?mode=ro", uri=True, timeout=self.timeout,
            isolation_level=None, check_same_thread=False,
        )
        try:
            conn.row_factory = sqlite3.Row
            conn.execute(f"PRAGMA busy_timeout={int(self.timeout * 1000)}")
            conn.execute("PRAGMA query_only=ON")
        except sqlite3.Error:
            conn.close()
            raise
        slot.conn, slot.generation = conn, generation
        return conn

    @staticmethod
    def drop(slot: _Slot) -> None:
        if slot.conn is not None:
            with contextlib.suppress(sqlite3.Error):
                slot.conn.close()
            slot.conn = None

    def close(self) -> None:
        """Close every thread's connection (each after its read in progress, if any)."""
        with self._all_lock:
            slots = list(self._all)
        for slot in slots:
            with slot.lock:
                self.drop(slot)
