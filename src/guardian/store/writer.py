"""The store's one writer thread: SQLite writes leave the event loop, in order, bounded.

Why: a write can wait for another process's lock (the busy timeout), a full or slow disk
or a hung mount; on the event loop any of those is a late check or a late restart, and
Guardian's own trouble must never become a target's. So the daemon's components hand
their writes here as *jobs* and keep what they wrote in memory until it is in the file
(the breaker state, open incidents, uptime counts), exactly as they do for a write that
failed.

* One thread, one FIFO queue: the order of the loop's writes is the order of the file's
  (an incident's row before its results, an adoption after the events it adopts).
* Bounded: a store that stopped answering must not grow memory without end. A job that
  does not fit is *refused* at once (the caller keeps or counts what it would have
  written), never waited for: :meth:`submit` never blocks on I/O.
* A job with a ``key`` (a component's "write what is unsaved") is queued at most once: it
  reads what is unsaved when it runs, so one queued flush covers every save made before
  it, and a thousand saves while the file is locked cost one queue slot.
* Daemon thread: a write stuck in the kernel never keeps Guardian from exiting;
  :meth:`close` waits a bounded time for what is queued.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable

log = logging.getLogger("guardian.db")

MAX_JOBS = 10_000  # queued writes before new ones are refused (a stuck or locked file)

Job = Callable[[], object]


class StoreWriter:
    """Runs submitted jobs one at a time, in order, on its own daemon thread."""

    def __init__(self, name: str = "guardian-store-writer", *, max_jobs: int = MAX_JOBS) -> None:
        if max_jobs < 1:
            raise ValueError("max_jobs must be at least 1")
        self.max_jobs = max_jobs
        self.refused = 0  # jobs that did not fit (counted, never waited for)
        self.failed = 0  # jobs that raised (logged; the store's own rules keep the data)
        self._cond = threading.Condition()
        self._jobs: deque[tuple[str | None, Job]] = deque()
        self._keys: set[str] = set()  # keys of jobs queued and not started
        self._submitted = 0
        self._done = 0
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    @property
    def thread(self) -> threading.Thread:
        return self._thread

    @property
    def pending(self) -> int:
        """Jobs queued or running."""
        with self._cond:
            return self._submitted - self._done

    def submit(self, job: Job, key: str | None = None) -> bool:
        """Queue ``job``; False when it was refused (queue full, or closing).

        With ``key``: True at once when a job with that key is queued and not started
        yet (that one will do this job's work).
        """
        with self._cond:
            if self._stopping:
                return False
            if key is not None and key in self._keys:
                return True
            if len(self._jobs) >= self.max_jobs:
                self.refused += 1
                return False
            self._jobs.append((key, job))
            if key is not None:
                self._keys.add(key)
            self._submitted += 1
            self._cond.notify_all()
            return True

    def drain(self, timeout: float) -> bool:
        """Wait until every job submitted before this call has run; False on timeout."""
        if threading.current_thread() is self._thread:
            return True  # a job waiting for itself would never end
        with self._cond:
            goal = self._submitted
            return self._cond.wait_for(lambda: self._done >= goal, timeout)

    def close(self, timeout: float) -> bool:
        """Run what is queued (for ``timeout`` at most), then stop; True when all ran."""
        drained = self.drain(timeout)
        with self._cond:
            self._stopping = True
            if not drained:
                self._jobs.clear()  # a stuck write: what is left stays in memory
                self._keys.clear()
            self._cond.notify_all()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout if drained else 0.1)
        return drained

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._jobs and not self._stopping:
                    self._cond.wait()
                if not self._jobs:
                    return
                key, job = self._jobs.popleft()
                if key is not None:
                    self._keys.discard(key)
            try:
                job()
            except Exception:
                self.failed += 1
                log.exception("a store write failed", extra={"event": "store_write_error"})
            finally:
                with self._cond:
                    self._done += 1
                    self._cond.notify_all()
