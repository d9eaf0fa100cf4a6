"""Wires the parts into one running Guardian: backends, checks, engine, and what reacts.

Start order matters: services Guardian supervises come up first (dependencies before
dependants), then the scheduler, then the API. Shutdown runs in reverse, each step bounded
so a stuck part cannot keep Guardian from exiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from guardian.checks import CheckContext, build_check
from guardian.checks.base import Check
from guardian.clock import Clock, SystemClock
from guardian.config import Config
from guardian.engine import Engine
from guardian.events import EventBus
from guardian.incidents import Incidents, start_incidents
from guardian.incidents.store import Incident, Store, StoreError
from guardian.recovery import BreakerStore, MemoryBreakerStore, RecoveryManager, SqliteBreakerStore
from guardian.result import CheckResult
from guardian.services import build_backend
from guardian.services.base import ServiceBackend, ServiceStatus
from guardian.state import State

if TYPE_CHECKING:
    from fastapi import FastAPI

    from guardian.api.app import ApiServer

log = logging.getLogger("guardian.runtime")


class Guardian:
    def __init__(self, config: Config, *, clock: Clock | None = None) -> None:
        self.config = config
        self.clock = clock or SystemClock()
        self.bus = EventBus()
        self.state = State(config, self.bus)
        self.backends: dict[str, ServiceBackend] = {}
        for target in config.targets:
            backend = build_backend(target, self.clock, config.guardian.state_dir)
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
        self._incidents: Incidents | None = None
        self.api: ApiServer | None = None
        self._app: FastAPI | None = None

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
        try:
            self._incidents = start_incidents(
                self.config, self.bus, self.clock, self.state, self.backends
            )
        except (StoreError, OSError) as e:
            log.error(
                "incident store unavailable (%s): running without incidents and reports",
                e,
                extra={"event": "store_unavailable"},
            )
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
        await self._log_start_outcomes()
        self.engine.start()
        if self.config.api.enabled:
            await self._start_api()
        log.info(
            "guardian started: %d targets, %d checks",
            len(self.config.targets),
            len(self.engine.scheduled),
            extra={"event": "started"},
        )

    async def _log_start_outcomes(self) -> None:
        """Say which services were adopted (left running by an earlier Guardian), which
        were started, and which were neither: a line per target and a summary."""
        seen: dict[str, list[str]] = {"adopted": [], "started": [], "not running": []}
        for name, backend in self.backends.items():
            status: ServiceStatus | None = None
            try:
                status = await asyncio.wait_for(backend.status(), timeout=10)
                detail = status.detail
            except Exception as exc:
                detail = f"{type(exc).__name__}: {exc}"
            if status is not None and status.adopted:
                outcome = "adopted"
            elif status is not None and status.state.value in ("running", "starting"):
                outcome = "started"
            else:
                outcome = "not running"
            seen[outcome].append(name)
            log.info(
                "%s: %s%s",
                name,
                outcome,
                f" (pid {status.pid})" if status is not None and status.pid else "",
                extra={"target": name, "event": "start_outcome", "outcome": outcome,
                       "pid": status.pid if status is not None else None, "detail": detail},
            )
        if self.backends:
            log.info(
                "services: %d adopted %s, %d started %s, %d not running %s",
                *(x for k in seen for x in (len(seen[k]), seen[k])),
                extra={"event": "start_summary", **{k.replace(" ", "_"): seen[k] for k in seen}},
            )

    async def _start_api(self) -> None:
        from guardian.api.app import create_app, serve

        self._app = create_app(self)
        api = self.config.api
        try:
            self.api = await serve(self._app, api.host, api.port)
        except OSError as e:
            # Watching and repairing matter more than the dashboard: keep running.
            log.error(
                "API not started on %s:%d: %s",
                api.host,
                api.port,
                e.strerror or e,
                extra={"event": "api_failed"},
            )
            return
        log.info("API and status page on %s", self.api.url, extra={"event": "api_started"})

    async def stop(self) -> None:
        grace = self.config.guardian.shutdown_grace
        if self.api is not None:
            await self.api.stop(timeout=grace)
        if self._app is not None:
            self._app.state.metrics.close()
        await self.engine.stop(grace=grace)
        await self.engine.aclose()
        if self.recovery is not None:
            await self.recovery.aclose()
        if self._incidents is not None:
            await self._incidents.aclose(grace)
        # Supervised processes stop with Guardian unless their on_guardian_stop is
        # "leave" (then the next Guardian adopts them); OS services (SCM, systemd) keep
        # running: their backends' aclose() only releases handles.
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

    # ------------------------------------------------------------------ what the API reads

    def recovery_snapshot(self) -> dict[str, dict[str, Any]]:
        return self.recovery.snapshot() if self.recovery is not None else {}

    async def restart(self, target: str) -> str:
        """A manual restart (API/CLI): resets the breaker. KeyError for unknown targets."""
        if self.recovery is None:
            raise RuntimeError("Guardian is not running")
        return await self.recovery.restart(target, manual=True)

    async def run_checks(self, target: str | None = None) -> list[CheckResult]:
        if target is not None and target not in {t.name for t in self.config.targets}:
            raise KeyError(target)
        return await self.engine.run_once(target)

    def incidents(self, limit: int = 50, include_resolved: bool = False) -> list[dict[str, Any]]:
        if self.incidents_store is None:
            return []
        found = self.incidents_store.incidents(include_resolved=include_resolved, limit=limit)
        return [_incident_dict(i) for i in found]

    def incident(self, incident_id: int) -> dict[str, Any] | None:
        if self.incidents_store is None:
            return None
        found = self.incidents_store.incident(incident_id)
        if found is None:
            return None
        data = _incident_dict(found)
        data["report_markdown"] = None
        if found.report_path:
            with contextlib.suppress(OSError):
                data["report_markdown"] = Path(found.report_path).read_text(encoding="utf-8")
        return data

    @property
    def incidents_store(self) -> Store | None:
        return self._incidents.store if self._incidents is not None else None

    async def check_once(self, target: str | None = None) -> list[CheckResult]:
        """Run every check once (``guardian check``) without starting anything."""
        try:
            return await self.engine.run_once(target)
        finally:
            await self.engine.aclose()
            for backend in self.backends.values():
                await backend.aclose()


def _incident_dict(incident: Incident) -> dict[str, Any]:
    def iso(t: datetime | None) -> str | None:
        return t.isoformat() if t is not None else None

    return {
        "id": incident.id,
        "target": incident.target,
        "status": str(incident.status),
        "severity": incident.severity,
        "summary": incident.summary,
        "opened_at": iso(incident.opened_at),
        "escalated_at": iso(incident.escalated_at),
        "resolved_at": iso(incident.resolved_at),
        "failure_count": incident.failure_count,
        "flap_count": incident.flap_count,
        "report_path": incident.report_path,
    }
