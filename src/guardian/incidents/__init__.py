"""Incidents: the store, the tracker, reports and notifications, wired in one call.

``start_incidents`` is what the runtime uses; the parts stay usable on their own (the CLI
opens only the store and a reporter).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

from guardian.config.schema import Config
from guardian.core.clock import Clock
from guardian.core.events import EventBus
from guardian.core.state import State
from guardian.incidents.notify import Notifier
from guardian.incidents.report import LogTail, Reporter
from guardian.incidents.snapshot import SnapshotFn, state_snapshot
from guardian.incidents.store import Store
from guardian.incidents.tracker import IncidentTracker
from guardian.services.base import ServiceBackend
from guardian.store.db import Database

log = logging.getLogger("guardian.incidents")

__all__ = [
    "IncidentTracker",
    "Incidents",
    "Notifier",
    "Reporter",
    "Store",
    "backend_log_tail",
    "start_incidents",
]


def backend_log_tail(backends: Mapping[str, ServiceBackend]) -> LogTail:
    """A report log source backed by each target's ServiceBackend.log_tail."""

    async def tail(target: str, lines: int) -> list[str]:
        backend = backends.get(target)
        if backend is None:
            return []
        return await backend.log_tail(lines)

    return tail


@dataclass
class Incidents:
    store: Store
    reporter: Reporter
    notifier: Notifier
    tracker: IncidentTracker

    async def aclose(self, timeout: float = 5.0) -> None:
        """Stop tracking, let reports/notifications finish (bounded), close the store."""
        await self.tracker.aclose(timeout)
        await self.notifier.aclose(timeout)
        self.store.close()


def start_incidents(
    config: Config,
    bus: EventBus,
    clock: Clock,
    state: State,
    backends: Mapping[str, ServiceBackend],
    *,
    snapshot: SnapshotFn | None = None,
    db: Database | None = None,
) -> Incidents:
    """Open the store (pruning it) and subscribe an IncidentTracker to ``bus``.

    ``db`` is Guardian's shared database (the runtime opens it once for every component);
    without it the store opens ``config.store_path`` itself. Call from inside the running
    event loop (background report/notify tasks need it). Raises StoreError when the store
    file is unusable (only without a recovering ``db``).
    """
    store = Store.from_config(config, now=clock.now, db=db)
    reporter = Reporter(
        config,
        store,
        log_tail=backend_log_tail(backends),
        snapshot=snapshot or state_snapshot(state),
        clock=clock,
    )
    notifier = Notifier(config, store, clock)
    tracker = IncidentTracker(config, store, bus, clock, reporter, notifier)
    return Incidents(store, reporter, notifier, tracker)
