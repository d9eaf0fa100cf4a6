"""Wires the parts into one running Guardian: backends, checks, engine, and what reacts.

Start order matters: services Guardian supervises come up first (dependencies before
dependants), then the scheduler, then the API. Shutdown runs in reverse, each step bounded
so a stuck part cannot keep Guardian from exiting.

The event bus's listener order matters too, because publishing is synchronous and a
listener may publish while it handles an event (recovery publishes ``restart_started``
while it handles the failing result that asked for it): every listener sees the nested
event before the ones after it see the outer one. Guardian subscribes in this order,
built in this order in :meth:`Guardian.__init__` and :meth:`Guardian.start`:

1. ``State`` (the publisher of results; no listener).
2. Startup phases: a ``restart_started`` begins the new boot before anyone judges a
   result of it.
3. The incident tracker: it counts a failing result (and opens its incident) before
   recovery reacts to it, so the restart that result causes lands in that incident and
   clears the streak after the failure was counted; it is there before recovery is
   built, to hear recovery's standing decisions (``RecoveryPlan``).
4. Uptime: records the result as it was, before anything reacts.
5. Recovery: decides restarts on the result.
6. Remediation (the ladder): acts on conditions after recovery saw the result, and asks
   recovery for a restart through its policy.
7. The ComfyUI queue journal (only with a ComfyUI target): it follows recovery's and the
   ladder's events (an exit, a restart, the ladder's stuck prompt) after they happened.
8. The API's bridge and metrics (subscribed when the API starts): they show the state
   after every reaction above.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from guardian.api.restarts import RestartDesk, RestartTicket
from guardian.checks import CheckContext
from guardian.checks.base import Check
from guardian.checks.registry import build_check
from guardian.config.schema import Config
from guardian.core.clock import Clock, SystemClock
from guardian.core.events import EventBus
from guardian.core.result import CheckResult
from guardian.core.state import State
from guardian.engine.overload import LoopLagMonitor, overloaded_reason
from guardian.engine.scheduler import Engine
from guardian.engine.startup import StartupPhases
from guardian.incidents import Incidents, start_incidents
from guardian.incidents.store import INCIDENTS, Store, StoreError
from guardian.incidents.timeline import incident_dicts
from guardian.journal.keeper import QueueKeeper, QueueView
from guardian.journal.store import QUEUE
from guardian.recovery.breakers import (
    BREAKERS,
    BreakerStore,
    MemoryBreakerStore,
    SqliteBreakerStore,
)
from guardian.recovery.manager import RecoveryManager
from guardian.remediation.ladder import Remediation
from guardian.services.base import KnowsPid, ServiceBackend, ServiceStatus
from guardian.services.factory import build_backend
from guardian.services.lifecycle import ServiceLifecycle
from guardian.store import lock as store_lock
from guardian.store import runfile
from guardian.store.db import Database
from guardian.support.fdlimit import FdLimits, api_connection_cap, raise_nofile
from guardian.uptime.store import UPTIME, UptimeStore

if TYPE_CHECKING:
    from starlette.applications import Starlette

    from guardian.api.bridge import LoopBridge
    from guardian.api.queue import QueueListing
    from guardian.api.server import ApiServer

log = logging.getLogger("guardian.runtime")

STORE_BUSY_TIMEOUT = 0.25  # s SQLite waits for another writer's lock before giving up


class Guardian:
    def __init__(
        self, config: Config, *, clock: Clock | None = None, config_path: Path | None = None
    ) -> None:
        self.config = config
        self.config_path = config_path  # for the runtime file; None: built-in defaults
        self.clock = clock or SystemClock()
        self.bus = EventBus()
        self.state = State(config, self.bus)
        self.backends: dict[str, ServiceBackend] = {}
        for target in config.targets:
            backend = build_backend(target, self.clock, config.guardian.state_dir)
            if backend is not None:
                self.backends[target.name] = backend
        # Guardian's own lateness: timeouts while it stalls are never held against targets
        # (by the engine's hard timeout, and by checks that keep a deadline of their own).
        self.overload = LoopLagMonitor(self.state)
        stall = CheckStall(self.overload)
        checks: list[tuple[str, Check]] = []
        for target in config.targets:
            ctx = CheckContext(
                target.name, self.clock, self.backends.get(target.name), stall=stall
            )
            for check_cfg in target.checks:
                if check_cfg.enabled:
                    checks.append((target.name, build_check(check_cfg, ctx)))
        # Listener 2 of the bus order (see the module docstring). Startup phases follow
        # recovery's restart events on the bus (engine never imports recovery); they begin
        # for every target when Guardian itself starts.
        self.startup = StartupPhases(config, self.clock)
        self.startup.attach(self.bus)
        self.engine = Engine(
            self.state, checks, self.clock, jitter=config.guardian.jitter, startup=self.startup
        )
        self.engine.lag_probe = self.overload
        windows = [(sc.target, sc.name, sc.lateness) for sc in self.engine.scheduled]
        self.overload.watch_lateness(lambda: [(t, c, w.p99()) for t, c, w in windows])
        self.fd_limits: FdLimits | None = None
        self.started_at: datetime | None = None
        self.db: Database | None = None
        self.breakers: BreakerStore | None = None
        self.recovery: RecoveryManager | None = None
        self.remediation: Remediation | None = None
        self.queue: QueueKeeper | None = None
        self._incidents: Incidents | None = None
        self.api: ApiServer | None = None
        self._app: Starlette | None = None
        self.uptime_counts: UptimeStore | None = None
        self._uptime_unsubscribe: Callable[[], None] | None = None
        self._bridge: LoopBridge | None = None
        self._lock: store_lock.StoreLock | None = None
        # Manual restarts in flight, one per target: requests meanwhile join it.
        self._desk = RestartDesk(self._manual_restart, self._restartable)

    def _open_database(self) -> Database:
        """Guardian's one SQLite file, opened once for every component.

        It never raises for the file's sake: a damaged file is moved aside, a refused or
        unopenable one is replaced by memory, and each is shown as the ``store`` problem.
        """
        return Database(
            self.config.store_path,
            problems=self.state,
            recover=True,
            monotonic=self.clock.monotonic,
            now=self.clock.now,
            components=(INCIDENTS, BREAKERS, UPTIME, QUEUE),
            # Another process holding the write lock must not hold the event loop: writes
            # run on the store's writer thread; a busy store is a write kept in memory for
            # later, never a late restart.
            timeout=STORE_BUSY_TIMEOUT,
            writer=True,
        )

    def _open_breaker_store(self, db: Database) -> BreakerStore:
        try:
            return SqliteBreakerStore(db)
        except (StoreError, OSError) as e:
            log.error(
                "breaker store unavailable (%s): restart counters will not survive a restart",
                e,
                extra={"event": "store_unavailable"},
            )
            return MemoryBreakerStore()

    def _open_uptime(self, db: Database) -> None:
        """Persisted uptime buckets: a component of the one store file, like the others."""
        try:
            self.uptime_counts = UptimeStore(db, now=self.clock.now, monotonic=self.clock.monotonic)
        except (StoreError, OSError) as e:
            log.error("uptime not recorded: %s", e, extra={"event": "store_unavailable"})
            return
        self._uptime_unsubscribe = self.uptime_counts.subscribe(self.bus)

    def _open_queue_journal(self, db: Database, recovery: RecoveryManager) -> None:
        """The ComfyUI queue journals: recovery awaits their last read before a restart."""
        try:
            keeper = QueueKeeper(self.config, self.bus, self.clock, db, self.backends)
        except (StoreError, OSError) as e:
            log.error("queue journal unavailable (%s): a restart loses what was queued", e,
                      extra={"event": "store_unavailable"})
            return
        if not keeper.journals:
            keeper.close()
            return
        self.queue = keeper
        recovery.before_restart.append(keeper.before_restart)

    def _close_uptime(self) -> None:
        if self._uptime_unsubscribe is not None:
            self._uptime_unsubscribe()
            self._uptime_unsubscribe = None
        if self.uptime_counts is not None:
            self.uptime_counts.close()  # flushes; the shared Database is closed after it

    def _write_runtime_file(self) -> None:
        started = self.started_at.isoformat() if self.started_at is not None else ""
        try:
            runfile.write(
                self.config,
                started_at=started,
                config_path=self.config_path,
                api_url=self.api.url if self.api is not None else None,
            )
        except OSError as e:
            log.warning("runtime file not written (%s): the CLI needs --config to find this "
                        "Guardian", e, extra={"event": "runtime_file_failed"})

    async def start(self) -> None:
        # One Guardian per store, before anything is adopted or started (AlreadyRunning).
        self._lock = store_lock.acquire(self.config.store_path)
        self.started_at = self.clock.now()
        self.state.started_at = self.started_at
        self.fd_limits = raise_nofile()
        self.db = self._open_database()
        # Listeners 3 to 6 of the bus order, subscribed as they are built: incidents,
        # uptime, recovery, remediation (why this order: the module docstring).
        try:
            self._incidents = start_incidents(
                self.config, self.bus, self.clock, self.state, self.backends, db=self.db
            )
        except (StoreError, OSError) as e:
            log.error(
                "incident store unavailable (%s): running without incidents and reports",
                e,
                extra={"event": "store_unavailable"},
            )
        self.breakers = self._open_breaker_store(self.db)
        self._open_uptime(self.db)
        self.recovery = RecoveryManager(
            self.config,
            self.bus,
            self.backends,
            self.clock,
            dry_run=self.config.guardian.dry_run,
            store=self.breakers,
        )
        self.remediation = Remediation(
            self.config, self.bus, self.clock, self.recovery, dry_run=self.config.guardian.dry_run
        )
        self._open_queue_journal(self.db, self.recovery)
        for target in self.config.targets:
            if "grace_period" in target.recovery.model_fields_set:
                log.warning(
                    "%s: recovery.grace_period is deprecated: the startup phase"
                    " (startup_timeout, startup_probe_interval) covers boots; it still applies",
                    target.name,
                    extra={"event": "config_deprecated", "target": target.name},
                )
        self.startup.begin_all()
        lifecycle = ServiceLifecycle(
            self.config, self.backends, self.clock, observer=self.recovery
        )
        await lifecycle.start_all()
        await self._log_start_outcomes()
        if self.queue is not None:
            recovery = self.recovery
            await self.queue.start(lambda name: recovery.restart(name, manual=False),
                                   recovery.request_restart)
        self.engine.start()
        if self.config.api.enabled:
            await self._start_api()
        self._write_runtime_file()
        # Measured from here on: start-up itself (imports, opening the store, building the
        # API) blocks the loop by design and would read as a false "falling behind".
        self.overload.start()
        # What start-up built (modules, config, checks) lives as long as Guardian: keep it
        # out of the collector's scans, so a full collection stays short at 1000 targets.
        gc.collect()
        gc.freeze()
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
                if status.pid:
                    self.startup.already_up(name, _running_for(status.pid))
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
        from guardian.api.app import create_app
        from guardian.api.bridge import LoopBridge
        from guardian.api.server import ServeLimits, serve

        # The API runs on its own thread and loop; it reaches this one only via the bridge.
        # The bridge and the metrics subscribe here: the last listeners of the bus order.
        self._bridge = LoopBridge(self, asyncio.get_running_loop())
        self._app = create_app(self._bridge)
        api = self.config.api
        max_connections = api_connection_cap(
            api.max_connections, self.fd_limits or FdLimits(None, None)
        )
        if max_connections < api.max_connections:
            log.info(
                "API connections capped at %d (a quarter of the open-files limit)",
                max_connections,
                extra={"event": "api_connection_cap", "max_connections": max_connections},
            )
        limits = ServeLimits(
            max_connections=max_connections,
            max_header_bytes=api.max_header_bytes,
            header_timeout=api.header_timeout,
            keep_alive_timeout=api.keep_alive_timeout,
        )
        try:
            self.api = await serve(self._app, api.host, api.port, limits)
        except (OSError, RuntimeError) as e:
            # Watching and repairing matter more than the dashboard: keep running.
            log.error(
                "API not started on %s:%d: %s",
                api.host,
                api.port,
                getattr(e, "strerror", None) or e,
                extra={"event": "api_failed"},
            )
            return
        log.info("API and status page on %s", self.api.url, extra={"event": "api_started"})

    async def stop(self) -> None:
        grace = self.config.guardian.shutdown_grace
        with contextlib.suppress(OSError):
            runfile.remove(self.config)
        if self.api is not None:
            await self.api.stop(timeout=grace)
        if self._app is not None:
            self._app.state.metrics.close()
        if self._bridge is not None:
            self._bridge.close()
        await self.engine.stop(grace=grace)
        await self.engine.aclose()
        if self.remediation is not None:
            await self.remediation.aclose()
        if self.queue is not None:
            await self.queue.aclose()
        await self.overload.stop()
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
        self._close_uptime()
        if self.db is not None:  # writes what is queued: in a thread, bounded
            await asyncio.to_thread(self.db.close)
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set, then shut down in order (also when starting failed:
        what was started is stopped, not left running unsupervised)."""
        try:
            await self.start()
            await stop.wait()
        finally:
            log.info("guardian stopping", extra={"event": "stopping"})
            await self.stop()
            log.info("guardian stopped", extra={"event": "stopped"})

    # ------------------------------------------------------------------ what the API reads

    def recovery_snapshot(self) -> dict[str, dict[str, Any]]:
        """Recovery's view per target, plus the pid where the backend knows it (no I/O),
        so /api/health names it even for a target without a ``service`` check."""
        snap = self.recovery.snapshot() if self.recovery is not None else {}
        for name, backend in self.backends.items():
            if isinstance(backend, KnowsPid) and name in snap:
                snap[name]["pid"] = backend.pid
        return snap

    async def restart(self, target: str) -> str:
        """A manual restart: resets the breaker; waits for its outcome. KeyError for
        unknown targets. Requests for a target whose manual restart is still in flight
        join it: fifty clicks (or a script in a loop) make one restart."""
        if self.recovery is None:
            raise RuntimeError("Guardian is not running")
        return await self._desk.run(target)

    async def request_restart(self, target: str) -> RestartTicket:
        """The API's restart: started (or joined) now, answered at once (202)."""
        if self.recovery is None:
            raise RuntimeError("Guardian is not running")
        return self._desk.request(target)

    def _restartable(self, target: str) -> bool:
        return self.recovery is not None and target in self.recovery.targets

    async def _manual_restart(self, target: str) -> str:
        if self.recovery is None:
            raise RuntimeError("Guardian is not running")
        return await self.recovery.restart(target, manual=True)

    def queue_views(self) -> dict[str, QueueView]:
        keeper = self.queue
        if keeper is None:
            return {}
        return {name: view for name in keeper.journals
                if (view := keeper.view(name)) is not None}

    async def queue_command(self, target: str, command: str,
                            prompt_id: str | None) -> QueueListing:
        """``guardian queue`` (list/release/drop) for one target; KeyError if unknown."""
        from guardian.api.queue import queue_listing

        keeper = self.queue
        view = keeper.view(target) if keeper is not None else None
        if keeper is None or view is None:
            raise KeyError(target)
        message = None
        if command == "restart_when_idle":
            message = keeper.restart_when_idle(target, lambda: self.restart(target))
        elif command == "release" and prompt_id is not None:
            message = await keeper.release(target, prompt_id)
        elif command == "drop" and prompt_id is not None:
            message = await keeper.drop(target, prompt_id)
        view = keeper.view(target) or view
        return queue_listing(view, await keeper.quarantine(target), message)

    async def run_checks(self, target: str | None = None) -> list[CheckResult]:
        if target is not None and target not in {t.name for t in self.config.targets}:
            raise KeyError(target)
        return await self.engine.run_once(target)

    def incidents(self, limit: int = 50, include_resolved: bool = False) -> list[dict[str, Any]]:
        if self.incidents_store is None:
            return []
        store = self.incidents_store
        return incident_dicts(store, store.incidents(include_resolved=include_resolved,
                                                     limit=limit))

    def incident(self, incident_id: int) -> dict[str, Any] | None:
        if self.incidents_store is None:
            return None
        found = self.incidents_store.incident(incident_id)
        if found is None:
            return None
        (data,) = incident_dicts(self.incidents_store, [found])
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


class CheckStall:
    """The lag monitor as checks see it (:class:`~guardian.checks.base.GuardianStall`)."""

    def __init__(self, monitor: LoopLagMonitor) -> None:
        self._monitor = monitor

    def mark(self) -> float:
        return self._monitor.mark()

    def own_fault(self, mark: float, timeout: float) -> str | None:
        return overloaded_reason(self._monitor.stalled_since(mark), timeout)


def _running_for(pid: int) -> float:
    """How long process ``pid`` has run, seconds (0 when it cannot be read)."""
    import time

    import psutil  # only with an adopted process: not on every run path

    try:
        return max(0.0, time.time() - psutil.Process(pid).create_time())
    except (psutil.Error, OSError):
        return 0.0
