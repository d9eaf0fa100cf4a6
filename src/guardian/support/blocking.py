"""Blocking calls (statfs, /proc reads, NVML, snapshots) off the event loop, bounded.

``asyncio.to_thread`` shares one default pool: a hung drive fills it, every other
target's checks queue behind it, and its non-daemon threads keep the process alive after
shutdown. Here every *kind* of blocking call gets its own :class:`BlockingPool`:

- at most ``max_workers`` calls of that kind run at once (one daemon thread each, so a
  stuck one never keeps Guardian from exiting);
- every call has its own deadline: past it the caller gets :class:`CallTimedOut` and the
  thread is abandoned (a blocked syscall cannot be cancelled, only left behind);
- a call with a ``key`` (a path, a check: one key names one operation) is never run twice
  at once. A caller that finds the key's call running joins it and shares its answer
  (two targets checking ``/`` at the same moment start one statfs); if that call has
  been running longer than the caller's whole deadline it is stuck, and the caller gets
  :class:`StillBlocked` at once. One hung mount costs one thread, not one per interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")

DEFAULT_WORKERS = {"disk": 8, "memory": 4, "gpu": 4, "snapshot": 8, "report": 2, "notify": 4}
# Calls past their deadline (stuck in the kernel) that may stay behind without taking a
# worker from calls that still answer: ten hung mounts must not fail the check of "/".
# Each key still has at most one call, so this bounds threads per hung path to one.
DEFAULT_STUCK = {"disk": 64, "startup": 16}
STUCK_RECHECK = 0.05  # s: a waiting caller looks again when a running call may turn stuck


class BlockingError(Exception):
    """A bounded blocking call did not produce an answer."""


class CallTimedOut(BlockingError):
    """The call did not return within its deadline (it may still be running)."""

    def __init__(self, what: str, deadline: float) -> None:
        super().__init__(f"{what} did not return within {deadline:g} s")
        self.what = what
        self.deadline = deadline


class StillBlocked(BlockingError):
    """The previous call for this key has not returned: no new thread was started."""

    def __init__(self, what: str, since_s: float) -> None:
        super().__init__(f"{what} still blocked since {since_s:.0f} s")
        self.what = what
        self.since_s = since_s


class NoWorker(BlockingError):
    """Every worker of this kind is busy (stuck) and none came free before the deadline."""

    def __init__(self, kind: str, busy: int) -> None:
        super().__init__(f"no free {kind} worker: {busy} call(s) still running")
        self.kind = kind
        self.busy = busy


class _Call(Generic[T]):
    """One call in its thread: result or exception, and who to tell when it ends."""

    def __init__(
        self, fn: Callable[[], T], key: str | None, started: float, deadline: float = 0.0
    ) -> None:
        self.fn = fn
        self.key = key
        self.started = started
        self.deadline = deadline
        self.done = threading.Event()
        self.result: T | None = None
        self.error: BaseException | None = None
        self._lock = threading.Lock()
        self._listeners: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []

    def listen(self, loop: asyncio.AbstractEventLoop) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = loop.create_future()
        with self._lock:
            if not self.done.is_set():
                self._listeners.append((loop, fut))
                return fut
        fut.set_result(None)
        return fut

    def finish(self) -> None:
        with self._lock:
            self.done.set()
            listeners, self._listeners = self._listeners, []
        for loop, fut in listeners:
            _wake(loop, fut)

    def value(self) -> T:
        if self.error is not None:
            raise self.error
        return self.result  # type: ignore[return-value]


def _wake(loop: asyncio.AbstractEventLoop, fut: asyncio.Future[None]) -> None:
    def settle() -> None:
        if not fut.done():
            fut.set_result(None)

    with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits any more
        loop.call_soon_threadsafe(settle)


class Pending(Generic[T]):
    """A started call, for code in a thread: :meth:`wait` for its value."""

    def __init__(self, call: _Call[T], what: str, joined: bool, pool: BlockingPool) -> None:
        self._call = call
        self.what = what
        self._joined = joined
        self._pool = pool

    def wait(self, timeout: float) -> T:
        """The value (or the call's own exception); :class:`CallTimedOut` after ``timeout``
        (:class:`StillBlocked` when this joined a call that was already running)."""
        if not self._call.done.wait(max(0.0, timeout)):
            if self._joined:
                raise StillBlocked(self.what, self._pool.age(self._call))
            raise CallTimedOut(self.what, timeout)
        return self._call.value()


class BlockingPool:
    """Bounded, deadline-guarded daemon threads for one kind of blocking call."""

    def __init__(
        self,
        kind: str,
        max_workers: int,
        *,
        max_stuck: int = 0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_workers < 1:
            raise ValueError("max_workers must be at least 1")
        self.kind = kind
        self.max_workers = max_workers
        self.max_stuck = max_stuck
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._slot_free = threading.Condition(self._lock)
        self._running: set[_Call[object]] = set()
        self._by_key: dict[str, _Call[object]] = {}
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []

    # ------------------------------------------------------------------ what is going on

    @property
    def busy(self) -> int:
        """Calls running now (stuck ones included)."""
        with self._lock:
            return len(self._running)

    def blocked_since(self, key: str) -> float | None:
        """Seconds the call for ``key`` has been running, or ``None`` if none is."""
        with self._lock:
            call = self._by_key.get(key)
            return None if call is None else self._monotonic() - call.started

    # ------------------------------------------------------------------ calling

    async def run(
        self, fn: Callable[[], T], deadline: float, *, key: str | None = None, what: str = ""
    ) -> T:
        """``fn()`` in a worker thread; its value, or a :class:`BlockingError` by ``deadline``.

        Cancelling the awaiting task abandons the call the same way a timeout does.
        """
        what = what or key or self.kind
        loop = asyncio.get_running_loop()
        end = loop.time() + deadline
        while True:
            started = self._try_start(fn, key, what, deadline)
            if started is not None:
                call, joined = started
                break
            remaining = end - loop.time()
            if remaining <= 0:
                raise NoWorker(self.kind, self.busy)
            waiter: asyncio.Future[None] = loop.create_future()
            with self._lock:
                self._waiters.append((loop, waiter))
            try:
                if self.max_stuck:  # a worker also frees up by its call turning stuck
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(waiter, min(remaining, STUCK_RECHECK))
                else:
                    await asyncio.wait_for(waiter, remaining)
            except TimeoutError:
                raise NoWorker(self.kind, self.busy) from None
            finally:
                with self._lock:
                    if (loop, waiter) in self._waiters:
                        self._waiters.remove((loop, waiter))
        finished = call.listen(loop)
        try:
            await asyncio.wait_for(finished, max(0.0, end - loop.time()))
        except TimeoutError:
            if joined:
                raise StillBlocked(what, self.age(call)) from None
            raise CallTimedOut(what, deadline) from None
        return call.value()

    def call(
        self, fn: Callable[[], T], deadline: float, *, key: str | None = None, what: str = ""
    ) -> T:
        """The same as :meth:`run` for code that is already in a thread."""
        end = time.monotonic() + deadline
        pending = self.submit(fn, deadline, key=key, what=what)
        try:
            return pending.wait(max(0.0, end - time.monotonic()))
        except StillBlocked:
            raise
        except CallTimedOut:
            raise CallTimedOut(pending.what, deadline) from None

    def submit(
        self, fn: Callable[[], T], deadline: float, *, key: str | None = None, what: str = ""
    ) -> Pending[T]:
        """Start ``fn()`` (waiting up to ``deadline`` for a free worker) without waiting for it.

        For code in a thread that gathers several calls at once, each then waited for with
        :meth:`Pending.wait`.
        """
        what = what or key or self.kind
        end = time.monotonic() + deadline
        with self._slot_free:
            while True:
                started = self._try_start_locked(fn, key, what, deadline)
                if started is not None:
                    return Pending(started[0], what, started[1], self)
                remaining = end - time.monotonic()
                if remaining <= 0:
                    raise NoWorker(self.kind, len(self._running))
                self._slot_free.wait(min(remaining, STUCK_RECHECK) if self.max_stuck
                                     else remaining)

    def age(self, call: _Call[T]) -> float:
        """Seconds ``call`` has been running."""
        return self._monotonic() - call.started

    def _try_start(
        self, fn: Callable[[], T], key: str | None, what: str, deadline: float
    ) -> tuple[_Call[T], bool] | None:
        with self._lock:
            return self._try_start_locked(fn, key, what, deadline)

    def _try_start_locked(
        self, fn: Callable[[], T], key: str | None, what: str, deadline: float
    ) -> tuple[_Call[T], bool] | None:
        """(call, joined): a new call, or the key's running one; ``None``: no free worker."""
        if key is not None and key in self._by_key:
            running: _Call[T] = self._by_key[key]  # type: ignore[assignment]
            if self.age(running) >= deadline:  # older than our whole deadline: stuck
                raise StillBlocked(what, self.age(running))
            return running, True
        if len(self._running) >= self.max_workers:
            if len(self._running) >= self.max_workers + self.max_stuck:
                return None
            stuck = sum(1 for c in self._running if self.age(c) >= c.deadline)
            if len(self._running) - stuck >= self.max_workers:
                return None
        call: _Call[T] = _Call(fn, key, self._monotonic(), deadline)
        thread = threading.Thread(
            target=self._work, args=(call,), name=f"guardian-{self.kind}", daemon=True
        )
        self._running.add(call)  # type: ignore[arg-type]
        if key is not None:
            self._by_key[key] = call  # type: ignore[assignment]
        try:
            thread.start()
        except RuntimeError:  # cannot start a thread (limits): say so, hold nothing
            self._release_locked(call)  # type: ignore[arg-type]
            raise
        return call, False

    def _work(self, call: _Call[T]) -> None:
        try:
            call.result = call.fn()
        except BaseException as exc:  # handed to the caller, never lost in the thread
            call.error = exc
        with self._lock:
            self._release_locked(call)  # type: ignore[arg-type]
        call.finish()

    def _release_locked(self, call: _Call[object]) -> None:
        self._running.discard(call)
        if call.key is not None and self._by_key.get(call.key) is call:
            del self._by_key[call.key]
        self._slot_free.notify_all()
        waiters, self._waiters = self._waiters, []
        for loop, fut in waiters:
            _wake(loop, fut)


_pools: dict[str, BlockingPool] = {}
_pools_lock = threading.Lock()


def pool(kind: str) -> BlockingPool:
    """The process-wide pool for ``kind`` (sizes in :data:`DEFAULT_WORKERS`, else 4)."""
    with _pools_lock:
        found = _pools.get(kind)
        if found is None:
            found = _pools[kind] = BlockingPool(
                kind, DEFAULT_WORKERS.get(kind, 4), max_stuck=DEFAULT_STUCK.get(kind, 0)
            )
        return found
