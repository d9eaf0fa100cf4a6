"""Starting and stopping the supervised services in dependency order.

Not recovery: this is what Guardian does when it starts (bring every service up,
dependencies first, each dependency RUNNING before its users) and what a full stop does
(dependents first). Recovery only needs to hear about it (a start begins a boot, a service
reported RUNNING begins a healthy run), through a :class:`StartObserver`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Protocol

from guardian.core.clock import Clock
from guardian.services.base import ServiceBackend, ServiceState

log = logging.getLogger("guardian.services.lifecycle")

START_WAIT = 30.0  # seconds start_all waits for a dependency to report RUNNING
START_POLL = 0.1


class _Dependencies(Protocol):
    @property
    def depends_on(self) -> Sequence[str]: ...


class _Target(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def recovery(self) -> _Dependencies: ...


class Stack(Protocol):
    """What start/stop order needs of the config (a ``Config`` is one): services sit
    below config, so they take this shape instead of importing it."""

    @property
    def targets(self) -> Sequence[_Target]: ...


class StartObserver(Protocol):
    """Told about each start (recovery: a boot begins, then a healthy run)."""

    def spawned(self, name: str) -> None:
        """``backend.start()`` of ``name`` returned."""

    def came_up(self, name: str) -> None:
        """``name`` reported RUNNING after its start."""


class ServiceLifecycle:
    """Starts every backend in dependency order and stops them in reverse."""

    def __init__(
        self,
        config: Stack,
        backends: Mapping[str, ServiceBackend],
        clock: Clock,
        *,
        observer: StartObserver | None = None,
        start_wait: float = START_WAIT,
    ) -> None:
        self.config = config
        self.backends = dict(backends)
        self.clock = clock
        self.observer = observer
        self.start_wait = start_wait

    def start_order(self) -> list[str]:
        """Targets with a backend, each after the targets it depends on (config order)."""
        deps = {
            t.name: [d for d in t.recovery.depends_on if d in self.backends]
            for t in self.config.targets
            if t.name in self.backends
        }
        order: list[str] = []
        visiting: set[str] = set()

        def visit(name: str) -> None:
            if name in order or name in visiting:
                return  # done, or a cycle: break it rather than hang
            visiting.add(name)
            for dep in deps.get(name, []):
                visit(dep)
            visiting.discard(name)
            order.append(name)

        for name in deps:
            visit(name)
        for name in self.backends:
            if name not in order:
                order.append(name)
        return order

    async def start_all(self) -> None:
        """Start every backend, dependencies first, each dependency RUNNING before its users."""
        needed = {d for t in self.config.targets for d in t.recovery.depends_on}
        for name in self.start_order():
            backend = self.backends[name]
            try:
                await backend.start()
            except Exception as exc:
                log.error(
                    "%s: start failed: %s",
                    name,
                    exc,
                    extra={"target": name, "event": "start_failed"},
                )
                continue
            if self.observer is not None:
                self.observer.spawned(name)
            if name in needed:
                up = await self._wait_running(name)
            else:
                try:
                    up = (await backend.status()).state == ServiceState.RUNNING
                except Exception:
                    up = False
            if self.observer is not None and up:
                self.observer.came_up(name)

    async def _wait_running(self, name: str) -> bool:
        deadline = self.clock.monotonic() + self.start_wait
        while True:
            try:
                if (await self.backends[name].status()).state == ServiceState.RUNNING:
                    return True
            except Exception:
                pass
            if self.clock.monotonic() >= deadline:
                log.warning(
                    "%s: not running %.0f s after start; starting its dependents anyway",
                    name,
                    self.start_wait,
                    extra={"target": name, "event": "start_timeout"},
                )
                return False
            await self.clock.sleep(START_POLL)

    async def stop_all(self) -> None:
        """Stop every backend, dependents first (stop recovery before: it would restart)."""
        for name in reversed(self.start_order()):
            try:
                await self.backends[name].stop()
            except Exception as exc:
                log.error(
                    "%s: stop failed: %s", name, exc, extra={"target": name, "event": "stop_failed"}
                )
