"""Uptime counts as they arrive: a buffer per (target, bucket), written in batches.

Recording a result is a dict update in memory (O(1), no I/O, on the event loop); the
buffer is written in one transaction at most every ``flush_every`` seconds (about two
upserts per target per flush), and on close; in the daemon on the store's writer thread,
never on the loop. A write that fails keeps the counts in memory
(bounded: the oldest buckets go first, counted in ``dropped``), so a store that cannot write
for a while loses nothing until the bound. What is buffered or being written stays
readable (:meth:`UptimeRecorder._buffered`), so the figures never miss a result.

What a flush writes and pruning are :mod:`guardian.uptime.store`'s, reading the windows
:mod:`guardian.uptime.reads`'; this base holds only the buffer and when to flush.
"""

from __future__ import annotations

import logging
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from datetime import datetime

from guardian.core.events import Event, EventBus, RecoveryEvent, RecoveryKind
from guardian.core.result import CheckResult, Status
from guardian.uptime.windows import HOUR, epoch

log = logging.getLogger("guardian.uptime.store")

Buffer = dict[tuple[str, int], list[int]]  # (target, bucket) -> [ok, total, restarts]


class UptimeRecorder(ABC):
    """The buffer of counts not yet written, and the flush that writes them.

    Recording takes only the buffer's lock, so it never waits for a write or a query.
    """

    def __init__(
        self, *, bucket_seconds: int, flush_every: float, max_pending: int,
        monotonic: Callable[[], float],
    ) -> None:
        if bucket_seconds <= 0 or HOUR % bucket_seconds:
            raise ValueError("bucket_seconds must be a positive divisor of 3600")
        self.bucket_seconds = bucket_seconds
        self.flush_every = flush_every
        self.max_pending = max_pending
        self._monotonic = monotonic
        self._ever_up: set[str] = set()  # targets with an up result on record
        self._buf_lock = threading.Lock()
        self._pending: Buffer = {}
        self._inflight: dict[int, Buffer] = {}  # batches being written (still readable)
        self._next_flush = monotonic() + flush_every
        self._next_prune = 0.0  # the first flush prunes, then at most hourly
        self.dropped = 0  # results (and restarts) lost because the buffer was full

    @abstractmethod
    def _write(self, batch: Buffer) -> bool:
        """Store ``batch`` in one transaction (True), or put it back with :meth:`_keep`."""

    @abstractmethod
    def prune(self, now: datetime | None = None) -> int:
        """Drop what is older than its retention; sets ``_next_prune``."""

    # ------------------------------------------------------------------ recording

    def bucket_of(self, t: datetime) -> int:
        e = int(epoch(t))
        return e - e % self.bucket_seconds

    def record(self, target: str, when: datetime, up: bool) -> None:
        """Count one result of ``target`` at wall time ``when``."""
        self._add(target, when, 1 if up else 0, 1, 0)

    def record_restart(self, target: str, when: datetime) -> None:
        self._add(target, when, 0, 0, 1)

    def _add(self, target: str, when: datetime, ok: int, total: int, restarts: int) -> None:
        e = int(epoch(when))
        key = (target, e - e % self.bucket_seconds)
        with self._buf_lock:
            counts = self._pending.get(key)
            if counts is None:
                self._pending[key] = [ok, total, restarts]
            else:
                counts[0] += ok
                counts[1] += total
                counts[2] += restarts
        if self._monotonic() >= self._next_flush:
            self._flush_due()

    def _flush_due(self) -> None:
        """A flush is due; here it runs now (a store with a writer thread queues it)."""
        self.flush()

    def observe(self, event: Event) -> None:
        """Event-bus listener: counts check results and restarts."""
        if isinstance(event, CheckResult):
            if event.status is Status.SKIPPED:
                return
            up = event.status is not Status.FAILED
            if not up and event.startup and event.target not in self._ever_up:
                # A fresh install's first boot: nothing has been up to be down from yet
                # (a made-up 33 % for 24 h, 7 d and 30 d). Counted from the first up result.
                return
            if up:
                self._ever_up.add(event.target)
            self.record(event.target, event.finished, up)
        elif isinstance(event, RecoveryEvent) and event.kind is RecoveryKind.RESTART_STARTED:
            self.record_restart(event.target, event.time)

    def subscribe(self, bus: EventBus) -> Callable[[], None]:
        return bus.subscribe(self.observe)

    def flush(self) -> bool:
        """Write the buffered counts in one transaction; False when they were kept instead
        (the store cannot write now: they go with the next flush)."""
        with self._buf_lock:
            self._next_flush = self._monotonic() + self.flush_every
            batch, self._pending = self._pending, {}
            if batch:
                self._inflight[id(batch)] = batch
        if batch and not self._write(batch):
            return False
        if self._monotonic() >= self._next_prune:
            self.prune()
        return True

    def _keep(self, batch: Buffer) -> None:
        """Put a batch that could not be written back in the buffer, within its bound."""
        for key, c in batch.items():
            mine = self._pending.setdefault(key, [0, 0, 0])
            mine[0] += c[0]
            mine[1] += c[1]
            mine[2] += c[2]
        excess = len(self._pending) - self.max_pending
        if excess <= 0:
            return
        lost = 0
        for key in sorted(self._pending, key=lambda k: k[1])[:excess]:
            c = self._pending.pop(key)
            lost += c[1] + c[2]
        self.dropped += lost
        log.warning(
            "uptime buffer full while the store cannot write: %d oldest counts dropped", lost,
            extra={"event": "uptime_dropped", "dropped": lost},
        )

    def _buffered(self) -> list[tuple[str, int, int, int, int]]:
        with self._buf_lock:
            return [
                (t, b, c[0], c[1], c[2])
                for buf in (self._pending, *self._inflight.values())
                for (t, b), c in buf.items()
            ]
