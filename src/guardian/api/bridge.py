"""The API thread's view of a Guardian that lives on another event loop.

The API runs on its own thread (:mod:`guardian.api.server`); the engine, recovery and
the incident store belong to the checks' loop. This :class:`GuardianView` keeps the API
from ever touching their internals from the wrong thread:

* ``state`` is read directly: :class:`~guardian.core.state.State` hands out copies.
* ``recovery_snapshot()`` and ``incidents()`` run on the owner loop (the recovery
  manager prunes while it snapshots; SQLite connections belong to their thread) and are
  cached briefly, invalidated by the matching event, so a flood of API reads costs the
  checks' loop at most one call per cache period, not one per request.
* ``restart()`` and ``run_checks()`` are submitted to the owner loop with
  ``run_coroutine_threadsafe`` and awaited with a timeout.

When the owner loop does not answer in time a read returns the last cached value (or an
empty one): the API degrades, the checks never wait for it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

from guardian.api.context import GuardianView
from guardian.api.restarts import RestartTicket
from guardian.config.schema import Config
from guardian.core.events import Event, IncidentEvent, RecoveryEvent
from guardian.core.result import CheckResult
from guardian.core.state import State
from guardian.engine.overload import LoopLagMonitor
from guardian.journal.keeper import QueueView
from guardian.uptime.store import UptimeStore

if TYPE_CHECKING:
    from guardian.api.queue import QueueListing

T = TypeVar("T")

READ_TTL = 1.0
READ_TIMEOUT = 2.0
RESTART_TIMEOUT = 120.0


class OwnerLoopTimeout(RuntimeError):
    """The checks' loop did not run an API call in time."""


class LoopBridge:
    """A :class:`GuardianView` for the API thread over a view owned by ``loop``."""

    def __init__(
        self,
        view: GuardianView,
        loop: asyncio.AbstractEventLoop,
        *,
        ttl: float = READ_TTL,
        read_timeout: float = READ_TIMEOUT,
    ) -> None:
        self._view = view
        self._loop = loop
        self.ttl, self.read_timeout = ttl, read_timeout
        self._cache: dict[object, tuple[float, int, Any]] = {}
        self._generation = 0  # bumped (on the owner loop) by recovery/incident events
        self._lock = threading.Lock()
        self._unsubscribe = view.state.bus.subscribe(self._on_event)

    # ------------------------------------------------------------------ plain reads

    @property
    def config(self) -> Config:
        return self._view.config

    @property
    def state(self) -> State:
        return self._view.state

    @property
    def started_at(self) -> datetime | None:
        return self._view.started_at

    @property
    def overload(self) -> LoopLagMonitor | None:
        return getattr(self._view, "overload", None)

    @property
    def uptime_counts(self) -> UptimeStore | None:
        # Read here, on the API thread: its reads take the store Database's lock.
        return getattr(self._view, "uptime_counts", None)

    def close(self) -> None:
        self._unsubscribe()

    def _on_event(self, event: Event) -> None:
        if isinstance(event, RecoveryEvent | IncidentEvent):
            self._generation += 1

    # ------------------------------------------------------------------ owner-loop reads

    def _on_owner(self, fn: Callable[[], T], timeout: float) -> T:
        if self._owner_is_current():
            return fn()
        done: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            if not done.set_running_or_notify_cancel():
                return
            try:
                done.set_result(fn())
            except BaseException as e:
                done.set_exception(e)

        try:
            self._loop.call_soon_threadsafe(run)
        except RuntimeError as e:  # owner loop closed
            raise OwnerLoopTimeout(str(e)) from None
        try:
            return done.result(timeout)
        except concurrent.futures.TimeoutError:
            done.cancel()
            raise OwnerLoopTimeout(f"Guardian's main loop did not answer in {timeout:g} s")\
                from None

    def _owner_is_current(self) -> bool:
        try:
            return asyncio.get_running_loop() is self._loop
        except RuntimeError:
            return False

    def _cached(self, key: object, fn: Callable[[], T], empty: T) -> T:
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(key)
        if hit is not None and hit[1] == self._generation and now - hit[0] < self.ttl:
            return hit[2]  # type: ignore[no-any-return]
        generation = self._generation
        try:
            value = self._on_owner(fn, self.read_timeout)
        except OwnerLoopTimeout:
            return hit[2] if hit is not None else empty
        with self._lock:
            self._cache[key] = (now, generation, value)
        return value

    def recovery_snapshot(self) -> dict[str, dict[str, Any]]:
        return self._cached("recovery", self._view.recovery_snapshot, {})

    def incidents(self, limit: int = 50, include_resolved: bool = False) -> list[dict[str, Any]]:
        return self._cached(
            ("incidents", limit, include_resolved),
            lambda: self._view.incidents(limit, include_resolved),
            [],
        )

    def incident(self, incident_id: int) -> dict[str, Any] | None:
        try:
            return self._on_owner(lambda: self._view.incident(incident_id), self.read_timeout)
        except OwnerLoopTimeout:
            return None

    def queue_views(self) -> dict[str, QueueView]:
        return self._cached("queues", self._view.queue_views, {})

    # ------------------------------------------------------------------ actions

    async def _submit(self, make: Callable[[], Awaitable[T]], timeout: float) -> T:
        if self._owner_is_current():
            return await make()

        async def call() -> T:
            return await make()

        future = asyncio.run_coroutine_threadsafe(call(), self._loop)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), timeout)
        except TimeoutError:
            future.cancel()
            raise OwnerLoopTimeout(
                f"Guardian's main loop did not finish in {timeout:g} s"
            ) from None

    async def restart(self, target: str) -> str:
        return await self._submit(lambda: self._view.restart(target), RESTART_TIMEOUT)

    async def request_restart(self, target: str) -> RestartTicket:
        return await self._submit(lambda: self._view.request_restart(target), RESTART_TIMEOUT)

    async def run_checks(self, target: str | None = None) -> list[CheckResult]:
        timeouts = [c.timeout for t in self.config.targets for c in t.checks] or [10.0]
        return await self._submit(lambda: self._view.run_checks(target), max(timeouts) + 10)

    async def queue_command(self, target: str, command: str,
                            prompt_id: str | None) -> QueueListing:
        return await self._submit(
            lambda: self._view.queue_command(target, command, prompt_id), RESTART_TIMEOUT)
