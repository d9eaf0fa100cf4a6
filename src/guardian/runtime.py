"""Wires the parts into one running Guardian: backends, checks, engine, and what reacts.

Start order matters: services Guardian supervises come up first (dependencies before
dependants), then the scheduler, then the API. Shutdown runs in reverse, each step bounded
so a stuck part cannot keep Guardian from exiting.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from datetime import datetime

from guardian.checks import CheckContext, build_check
from guardian.checks.base import Check
from guardian.clock import Clock, SystemClock
from guardian.config import Config
from guardian.engine import Engine
from guardian.events import EventBus
from guardian.recovery import BreakerStore, MemoryBreakerStore, RecoveryManager, SqliteBreakerStore
from guardian.services import build_backend
from guardian.services.base import ServiceBackend
from guardian.state import State

log = logging.getLogger("guardian.runtime")


class Guardian:
    def __init__(self, config: Config, *, clock: Clock | None = None) -> None:
        self.config = config
        self.clock = clock or SystemClock()
        self.bus = EventBus()
        self.state = State(config, self.bus)
        self.backends: dict[str, ServiceBackend] = {}
        for target in config.targets:
            backend = build_backend(target, self.clock)
            if backend is not None:
                self.backends[target.name] = backend
        checks: list[tuple[str, Check]] = []
        for target in config.targets:
            ctx = CheckContext(target.name, self.clock, self.backends.get(target.name))
            for check_cfg in target.checks:
                if check_cfg.enabled:
                    checks.append((target.name, build_check(check_cfg, ctx)))
        self.engine = Engine(self.state, checks, self.clock, jitter=config.guardian.jitter)
        self.started_at: datetime | None = None
        self.breakers: BreakerStore | None = None
        self.recovery: RecoveryManager | None = None

    def _open_breaker_store(self) -> BreakerStore:
        path = self.config.store_path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            return SqliteBreakerStore(path)
        except (OSError, sqlite3.Error) as e:
            log.warning(
                "cannot open state store %s (%s): restart counters will not survive a restart",
                path,
                e,
                extra={"event": "store_unavailable"},
            )
            return MemoryBreakerStore()

    async def start(self) -> None:
        self.started_at = self.clock.now()
        self.state.started_at = self.started_at
        self.breakers = self._open_breaker_store()
        self.recovery = RecoveryManager(
            self.config,
            self.bus,
            self.backends,
            self.clock,
            dry_run=self.config.guardian.dry_run,
            store=self.breakers,
        )
        await self.recovery.start_all()
        self.engine.start()
        log.info(
            "guardian started: %d targets, %d checks",
            len(self.config.targets),
            len(self.engine.scheduled),
            extra={"event": "started"},
        )

    async def stop(self) -> None:
        grace = self.config.guardian.shutdown_grace
        await self.engine.stop(grace=grace)
        await self.engine.aclose()
        if self.recovery is not None:
            await self.recovery.aclose()
        # Supervised processes are Guardian's children and stop with it; OS services
        # (SCM, systemd) keep running: their backends' aclose() only releases handles.
        for name, backend in self.backends.items():
            try:
                await asyncio.wait_for(backend.aclose(), timeout=grace)
            except Exception:
                log.exception("closing service backend %s failed", name)
        if self.breakers is not None and hasattr(self.breakers, "close"):
            self.breakers.close()

    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set, then shut down in order."""
        await self.start()
        try:
            await stop.wait()
        finally:
            log.info("guardian stopping", extra={"event": "stopping"})
            await self.stop()
            log.info("guardian stopped", extra={"event": "stopped"})

    async def check_once(self, target: str | None = None) -> list:  # type: ignore[type-arg]
        """Run every check once (``guardian check``) without starting anything."""
        try:
            return await self.engine.run_once(target)
        finally:
            await self.engine.aclose()
            for backend in self.backends.values():
                await backend.aclose()
