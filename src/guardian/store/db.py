"""Guardian's SQLite file: one owner for opening it, checking it, migrating it and its errors.

Breakers, incidents and uptime (and any later table) are *components*: each brings
its own ordered migrations and records how far it got in one row of ``guardian_schema``
(component, version). Only this module opens the file, so the rules below hold for all of
them at once.

Rules (why: a watchdog that stops watching because of its own bookkeeping is worse than
none; its store is Guardian's trouble, never a reason to exit or to act on a target):

* Opening: WAL, ``synchronous=NORMAL``, foreign keys, a busy timeout, and ``PRAGMA
  quick_check``. One writing connection per :class:`Database`, shared by every component
  and guarded by one re-entrant lock (``check_same_thread=False``: the API may read from
  another thread), and one read-only connection for heavy reads (below).
* A damaged file (quick_check fails, "malformed", "file is not a database" - at open or in
  the middle of a run) is *moved aside*, never deleted: renamed with a UTC timestamp
  (``guardian.db.corrupt-20261201T221500Z`` plus its ``-wal``/``-shm``), logged as
  ``store_damaged`` at ERROR with the new path, raised as the ``store`` problem in
  ``/api/health``, and a fresh file takes its place at once. Components get a reset call
  so they re-save what they hold in memory (the breaker state, the open incidents).
  The failed operation is retried once on the fresh file.
* A write that fails because the disk is full (``SQLITE_FULL``, ``ENOSPC``), an I/O error
  or a lock held too long raises :class:`StoreUnavailable`; components drop or keep that
  write in memory. It is logged at once, then at most every ``log_every`` seconds with a
  count; the problem is set at once and cleared at the next successful write (logged as
  ``store_recovered`` once per reported failure, so a flapping disk cannot flood the log).
* A missing or zero-length file where Guardian had written before (the sidecar
  ``<file>.written`` marker exists) is logged as ``store_lost`` at WARNING and raised as a
  problem: the store is recreated, but not silently.
* A file whose component schema is newer than this Guardian knows is *refused and left
  untouched* (not moved aside: it is healthy, and the newer Guardian that wrote it may come
  back; it is checked before the first write, even before WAL mode is set, for every
  component named at open). Guardian then runs on an in-memory database for every
  component, with the problem set, so it keeps supervising; nothing it learns survives
  its restart. Moving it aside instead would make a downgrade silently throw away the
  newer Guardian's state; refusing keeps it for the Guardian that can read it.
* Anything that prevents opening the file at all (permissions, a directory in the way)
  also falls back to memory with the problem set.

* Reads the running Guardian makes (the status page's aggregations, incident lists, an
  incident for its report) go through :meth:`Database.snapshot`: a read-only connection
  (``mode=ro``, ``query_only``) per reading thread (:mod:`guardian.store.readers`),
  reading one WAL snapshot. It never takes the writer's lock, so neither a long
  aggregation nor a write waiting for another process's lock delays a read on the event
  loop. Damage it finds is handled like any other (the read is retried under the
  writer's rules, which move the file aside); on memory (no file to share) it is an
  ordinary :meth:`read`.
* The daemon's writes (``writer=True``) leave the event loop: components hand them to
  :meth:`Database.submit`, which queues them for the one writer thread
  (:mod:`guardian.store.writer`: in order, bounded, never waited for). SQLite's busy
  waits, a full or hung disk happen there; a write that fails or does not fit in the
  queue is kept in memory by its component (or dropped and counted) under the rules
  above. Without ``writer`` (the CLI, tools) :meth:`submit` runs the job at once.

``recover=False`` (the CLI and tools) turns the fallbacks into errors instead: a reader
must not rename the daemon's file under it, and a refused file is reported, not replaced.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol, TypeVar

from guardian.store.component import Component, ComponentHost, ResetHook
from guardian.store.errors import (
    ErrorKind,
    StoreDamaged,
    StoreError,
    StoreNewer,
    StoreUnavailable,
    classify,
    describe,
)
from guardian.store.readers import Readers

__all__ = [  # the error classes and Component, importable from the owner as before
    "PROBLEM_KEY", "Component", "Database", "ProblemSink", "ResetHook", "StoreDamaged",
    "StoreError", "StoreNewer", "StoreUnavailable", "classify",
]

from guardian.store.writer import MAX_JOBS, Job, StoreWriter
from guardian.support.safe_open import write_atomic_text

log = logging.getLogger("guardian.db")

T = TypeVar("T")

PROBLEM_KEY = "store"
IDENTITY_EVERY = 1.0  # s between checks that the path still names the open file
MARKER_SUFFIX = ".written"
LOG_EVERY = 60.0  # seconds between repeated "write failed" lines
CLOSE_WAIT = 5.0  # s close() waits for the writer thread's queue (a stuck write: less)


class ProblemSink(Protocol):
    """Where Guardian's own trouble is shown (``State`` in the daemon)."""

    def set_problem(self, key: str, message: str) -> None: ...

    def clear_problem(self, key: str) -> None: ...


class _Damaged(Exception):
    """quick_check found a problem that sqlite3 did not raise as an exception."""


def utc_stamp(now: datetime) -> str:
    return now.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


class Database(ComponentHost):
    """Guardian's SQLite file (or memory) with the rules in the module docstring.

    Components :meth:`register` themselves (their migrations run at once) and do all their
    I/O through :meth:`read` and :meth:`write`, which hold the lock and apply the error
    rules, or :meth:`snapshot` for long reads that must not hold the lock. ``persistent``
    is False while running on memory. Pass the components you will register as
    ``components`` so a newer schema is refused before any of them writes (a component
    only registered later can only be refused after the others migrated).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        problems: ProblemSink | None = None,
        recover: bool = False,
        timeout: float = 10.0,
        log_every: float = LOG_EVERY,
        monotonic: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] | None = None,
        components: Sequence[Component] = (),
        writer: bool = False,
        max_jobs: int = MAX_JOBS,
    ) -> None:
        self.path = Path(path)
        # Checked at open before anything is written, so a refused file stays untouched.
        self._expected = tuple(components)
        self.in_memory_requested = str(path) == ":memory:"
        self.problems = problems
        self.recover = recover
        self.timeout = timeout
        self.log_every = log_every
        self._monotonic = monotonic
        self._now = now or (lambda: datetime.now(UTC))
        self.lock = threading.RLock()
        self.moved_to: list[Path] = []  # every damaged file this Database moved aside
        self.lost = False  # a file Guardian had written was found missing or empty
        self.persistent = False
        self._components: dict[str, tuple[Component, ResetHook | None]] = {}
        self._sticky: dict[str, str] = {}  # damaged / lost / refused: stays for the run
        self._trouble: str | None = None  # current write trouble (full, I/O, busy)
        self._trouble_count = 0
        self._trouble_logged_at: float | None = None
        self._trouble_reported = False
        self._closed = False
        self._resetting = False
        self._generation = 0  # bumped when the file is replaced: the readers reopen
        self._readers = Readers(self.path, timeout)
        self._trouble_lock = threading.Lock()  # trouble state: the writer and submit()
        self._file_id: tuple[int, int] | None = None  # (st_dev, st_ino) of the open file
        self._identity_due = 0.0
        with self.lock:
            self._conn = self._open()
            self._remember_file()
        self._writer = StoreWriter(max_jobs=max_jobs) if writer else None

    # ------------------------------------------------------------------ opening

    @property
    def marker(self) -> Path:
        return self.path.with_name(self.path.name + MARKER_SUFFIX)

    def _open(self, check_lost: bool = True) -> sqlite3.Connection:
        if self.in_memory_requested:
            return self._memory()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            return self._unusable(f"cannot create {self.path.parent}: {e.strerror or e}", e)
        if check_lost:
            self._check_lost()
        conn: sqlite3.Connection | None = None
        try:
            conn = self._connect(str(self.path))
            self._verify(conn)
        except (sqlite3.Error, _Damaged) as e:
            if conn is not None:
                with contextlib.suppress(sqlite3.Error):
                    conn.close()
            if isinstance(e, _Damaged) or classify(e) == "damaged":
                if not self.recover:
                    raise StoreDamaged(f"store {self.path} is damaged: {e}") from e
                return self._replace_damaged(str(e))
            return self._unusable(f"cannot open {self.path}: {e}", e)
        except StoreNewer as e:
            with contextlib.suppress(sqlite3.Error):
                conn.close()  # type: ignore[union-attr]
            if not self.recover:
                raise
            self._refused(str(e))
            return self._memory()
        self.persistent = True
        self._write_marker()
        return conn

    def _connect(self, target: str) -> sqlite3.Connection:
        # isolation_level=None: transactions are ours (write() issues BEGIN/COMMIT).
        conn = sqlite3.connect(
            target, timeout=self.timeout, isolation_level=None, check_same_thread=False
        )
        try:
            conn.row_factory = sqlite3.Row
            conn.execute(f"PRAGMA busy_timeout={int(self.timeout * 1000)}")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
        except sqlite3.Error:
            conn.close()
            raise
        return conn

    def _verify(self, conn: sqlite3.Connection) -> None:
        rows = [str(r[0]) for r in conn.execute("PRAGMA quick_check").fetchall()]
        if rows != ["ok"]:
            raise _Damaged("quick_check: " + "; ".join(rows[:3]))
        for comp in self._expected:
            self._check_not_newer(conn, comp, self._recorded(conn, comp))
        # Only now the first write: WAL mode changes the file header.
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(
            "CREATE TABLE IF NOT EXISTS guardian_schema ("
            " component TEXT PRIMARY KEY, version INTEGER NOT NULL)"
        )

    def _memory(self) -> sqlite3.Connection:
        conn = self._connect(":memory:")
        self._verify(conn)
        self.persistent = False
        return conn

    def _unusable(self, why: str, exc: BaseException) -> sqlite3.Connection:
        if not self.recover:
            raise StoreError(why) from exc
        msg = f"{why}; running on an in-memory store: nothing survives a restart"
        log.error(msg, extra={"event": "store_unavailable", "path": str(self.path)})
        self._set_sticky("unavailable", msg)
        return self._memory()

    def _check_lost(self) -> None:
        if not self.marker.exists():
            return
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            size = -1
        except OSError:
            return
        if size > 0:
            return
        what = "missing" if size < 0 else "empty (0 bytes)"
        msg = (
            f"state lost: store {self.path} is {what} although Guardian wrote it before;"
            " breaker state and incident history start from nothing"
        )
        log.warning(msg, extra={"event": "store_lost", "path": str(self.path)})
        self.lost = True
        self._set_sticky("lost", msg)

    def _write_marker(self) -> None:
        if self.marker.exists():
            return
        body = {"created": self._now().isoformat(), "store": self.path.name}
        try:
            write_atomic_text(self.marker, json.dumps(body) + "\n", 0o600)
        except OSError as e:
            log.debug("cannot write the store marker %s: %s", self.marker, e)

    def _replace_damaged(self, error: str) -> sqlite3.Connection:
        """Move the damaged file aside and open a fresh one (memory if that fails)."""
        try:
            moved = self._move_aside()
        except OSError as e:
            return self._unusable(
                f"store {self.path} is damaged ({error}) and cannot be moved aside"
                f" ({e.strerror or e})",
                e,
            )
        self.moved_to.append(moved)
        msg = (
            f"store {self.path} is damaged ({error}); kept as {moved},"
            " supervising on with a fresh store"
        )
        log.error(
            msg,
            extra={"event": "store_damaged", "path": str(self.path), "moved_to": str(moved)},
        )
        self._set_sticky("damaged", msg)
        try:
            conn = self._connect(str(self.path))
            self._verify(conn)
        except (sqlite3.Error, _Damaged) as e:
            return self._unusable(f"cannot create a fresh store at {self.path}: {e}", e)
        self.persistent = True
        self._write_marker()
        return conn

    def _move_aside(self) -> Path:
        base = f"{self.path.name}.corrupt-{utc_stamp(self._now())}"
        dest = self.path.with_name(base)
        n = 1
        while any(dest.with_name(dest.name + s).exists() for s in ("", "-wal", "-shm")):
            n += 1
            dest = self.path.with_name(f"{base}.{n}")
        # The main file last: until it moves, a retry still finds the damage at the old path.
        for suffix in ("-wal", "-shm"):
            side = self.path.with_name(self.path.name + suffix)
            with contextlib.suppress(FileNotFoundError):
                os.replace(side, dest.with_name(dest.name + suffix))
        with contextlib.suppress(FileNotFoundError):
            os.replace(self.path, dest)
        return dest

    # ------------------------------------------------------------------ operations

    def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` (queries only) under the lock with the error rules."""
        return self._run(fn, write=False)

    def write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` in one ``BEGIN IMMEDIATE`` transaction under the lock."""
        return self._run(fn, write=True)

    def snapshot(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` (queries only) in one read transaction on this thread's read-only
        connection.

        Never holds :attr:`lock`, so it waits neither for a write nor for another
        thread's read; everything ``fn`` reads comes from one snapshot (the one its first
        query sees). Without a file to share (memory, or the file refused) this is
        :meth:`read`. What a component queued for the writer thread and that has not run
        yet is not in the file: components overlay what they hold in memory.
        """
        if self._closed:
            raise StoreError(f"store {self.path} is closed")
        if not self.persistent:
            return self.read(fn)
        slot = self._readers.slot()
        with slot.lock:
            try:
                conn = self._readers.connection(slot, self._generation)
            except sqlite3.Error as e:
                raise StoreUnavailable(f"store {self.path}: cannot open for reading: {e}") from e
            try:
                conn.execute("BEGIN")
                try:
                    return fn(conn)
                finally:
                    if conn.in_transaction:
                        with contextlib.suppress(sqlite3.Error):
                            conn.execute("COMMIT")
            except (sqlite3.Error, OSError) as e:
                failed: BaseException = e
                self._readers.drop(slot)
                if classify(e) not in ("damaged", "full", "io", "busy"):
                    raise
        kind = classify(failed)
        if kind == "damaged":  # the writer's rules move the file aside, then retry
            return self.read(fn)
        raise StoreUnavailable(f"store {self.path}: {describe(kind, failed)}") from failed

    # ------------------------------------------------------------------ the writer thread

    def submit(self, job: Job, key: str | None = None) -> bool:
        """Run ``job`` (which calls :meth:`write`) on the writer thread; at once without one.

        Never blocks on the file: False when the job was refused (closed, or the queue
        is full: reported as the store's trouble), and the caller keeps or counts what it
        would have written. ``key``: see :meth:`StoreWriter.submit`.
        """
        if self._closed:
            return False
        if self._writer is None:
            job()
            return True
        if self._writer.submit(job, key):
            return True
        if not self._closed:
            self.report_backlog(f"{self._writer.max_jobs} writes queued and not done")
        return False

    def report_backlog(self, what: str) -> None:
        """Writes pile up faster than the file takes them: Guardian's trouble (logged,
        rate-limited, the ``store`` problem until a write works again)."""
        self._trouble_seen("busy", StoreUnavailable(what))

    def drain(self, timeout: float = CLOSE_WAIT) -> bool:
        """Wait (a thread, never the loop) until every write submitted so far has run."""
        return True if self._writer is None else self._writer.drain(timeout)

    async def settled(self, timeout: float = CLOSE_WAIT) -> bool:
        """:meth:`drain` for a coroutine: waits in a thread (bounded), not on the loop."""
        if self._writer is None or self._writer.pending == 0:
            return True
        import asyncio

        return await asyncio.to_thread(self.drain, timeout)

    @property
    def writer_thread(self) -> threading.Thread | None:
        return None if self._writer is None else self._writer.thread

    def _remember_file(self) -> None:
        try:
            st = os.stat(self.path)
            self._file_id = (st.st_dev, st.st_ino) if self.persistent else None
        except OSError:
            self._file_id = None

    def _check_replaced(self) -> None:
        """A store deleted or replaced under the running Guardian (SQLite would go on
        writing into the unlinked file, lost at the next start): say so at once
        (``store_lost``), open the file at the path and write back what is in memory."""
        now = self._monotonic()
        if self._file_id is None or self._resetting or now < self._identity_due:
            return
        self._identity_due = now + IDENTITY_EVERY
        try:
            st = os.stat(self.path)
            same = (st.st_dev, st.st_ino) == self._file_id
        except FileNotFoundError:
            same = False
        except OSError:
            return
        if same:
            return
        msg = (f"state lost: store {self.path} was deleted or replaced while Guardian ran;"
               " writing back what it holds in memory")
        log.warning(msg, extra={"event": "store_lost", "path": str(self.path)})
        self.lost = True
        self._set_sticky("lost", msg)
        self._reset(functools.partial(self._open, check_lost=False))
        self._remember_file()

    def _run(self, fn: Callable[[sqlite3.Connection], T], *, write: bool) -> T:
        with self.lock:
            if self._closed:
                raise StoreError(f"store {self.path} is closed")
            if write and self.recover:
                self._check_replaced()
            for attempt in (1, 2):
                conn = self._conn
                try:
                    out = self._once(conn, fn, write)
                except (sqlite3.Error, OSError) as e:
                    kind = classify(e)
                    if kind == "damaged":
                        if not self.recover:
                            raise StoreDamaged(f"store {self.path} is damaged: {e}") from e
                        if attempt == 1 and not self._resetting:
                            self._reset(functools.partial(self._replace_damaged, str(e)))
                            continue
                        raise StoreError(f"store {self.path}: {e}") from e
                    if kind in ("full", "io", "busy"):
                        self._trouble_seen(kind, e)
                        raise StoreUnavailable(f"store {self.path}: {describe(kind, e)}") from e
                    raise
                if write and self._trouble is not None:
                    self._trouble_cleared()
                return out
            raise AssertionError("unreachable")  # pragma: no cover

    @staticmethod
    def _once(conn: sqlite3.Connection, fn: Callable[[sqlite3.Connection], T], write: bool) -> T:
        if not write:
            return fn(conn)
        conn.execute("BEGIN IMMEDIATE")
        try:
            out = fn(conn)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            raise
        return out

    def _trouble_seen(self, kind: ErrorKind, exc: BaseException) -> None:
        """One rate limit for the whole trouble, across clears: a nearly full disk lets
        some writes through and fails others, and that flapping must not flood the log."""
        with self._trouble_lock:
            self._trouble_seen_now(kind, exc)

    def _trouble_seen_now(self, kind: ErrorKind, exc: BaseException) -> None:
        now = self._monotonic()
        self._trouble_count += 1
        self._trouble = f"store {self.path}: writes failing: {describe(kind, exc)}"
        self._publish()
        due = self._trouble_logged_at is None or now - self._trouble_logged_at >= self.log_every
        if not due:
            return
        self._trouble_logged_at = now
        self._trouble_reported = True
        log.error(
            "%s (%d failed since the last report); Guardian keeps supervising, these writes"
            " are dropped or kept in memory until the store works again",
            self._trouble,
            self._trouble_count,
            extra={"event": "store_write_failed", "path": str(self.path), "kind": kind},
        )
        self._trouble_count = 0

    def _trouble_cleared(self) -> None:
        with self._trouble_lock:
            self._trouble_cleared_now()

    def _trouble_cleared_now(self) -> None:
        self._trouble = None
        self._publish()
        if self._trouble_reported:  # one "works again" per reported failure, not per flap
            self._trouble_reported = False
            log.warning(
                "store %s writable again",
                self.path,
                extra={"event": "store_recovered", "path": str(self.path)},
            )

    @property
    def trouble(self) -> str | None:
        """The current write trouble, if any (cleared by the next successful write)."""
        return self._trouble

    # ------------------------------------------------------------------ problems

    def _set_sticky(self, key: str, message: str) -> None:
        self._sticky[key] = message
        self._publish()

    def problem(self) -> str | None:
        """Everything wrong with the store now, in one line (None when all is well)."""
        parts = [*self._sticky.values(), *([self._trouble] if self._trouble else [])]
        return "; ".join(parts) if parts else None

    def _publish(self) -> None:
        if self.problems is None:
            return
        msg = self.problem()
        if msg is None:
            self.problems.clear_problem(PROBLEM_KEY)
        else:
            self.problems.set_problem(PROBLEM_KEY, msg)

    def attach(self, problems: ProblemSink) -> None:
        """Report to ``problems`` from now on (and publish what happened so far)."""
        self.problems = problems
        self._publish()

    # ------------------------------------------------------------------ maintenance

    def integrity_check(self) -> str:
        return str(self.read(lambda c: c.execute("PRAGMA integrity_check").fetchone()[0]))

    @property
    def connection(self) -> sqlite3.Connection:
        """The raw connection (tests and diagnostics; components use read/write)."""
        return self._conn

    def close(self, timeout: float = CLOSE_WAIT) -> None:
        """Write what is queued (``timeout`` at most: a stuck write keeps it in memory),
        then close every connection."""
        if self._writer is not None and not self._writer.close(timeout):
            log.error("store %s: queued writes not done within %g s at close; they are"
                      " lost", self.path, timeout, extra={"event": "store_write_failed"})
        with self.lock:
            if self._closed:
                return
            self._closed = True
            # Readers first: the last connection to close checkpoints the WAL into the file.
            self._readers.close()
            with contextlib.suppress(sqlite3.Error):
                self._conn.close()
