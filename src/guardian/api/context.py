"""What the HTTP API needs from a running Guardian, and nothing more.

The API depends on this narrow protocol instead of the runtime class so it can be tested
(and fuzzed) against a :class:`StaticView` holding a real :class:`State`, and so the
runtime can change its internals without touching the API. ``guardian.runtime.Guardian``
satisfies :class:`GuardianView` structurally.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from guardian.api.restarts import RestartDesk, RestartTicket
from guardian.config.schema import Config
from guardian.core.result import CheckResult
from guardian.core.state import State
from guardian.engine.overload import LoopLagMonitor
from guardian.journal.keeper import QueueView
from guardian.uptime.store import UptimeStore

if TYPE_CHECKING:
    from guardian.api.queue import QueueListing


class GuardianView(Protocol):
    """Read access to state plus the two actions the API may trigger.

    Attributes are read-only properties here so that a runtime holding
    ``started_at: datetime | None`` (set on start) still matches.
    """

    @property
    def config(self) -> Config: ...

    @property
    def state(self) -> State: ...

    @property
    def started_at(self) -> datetime | None: ...

    @property
    def uptime_counts(self) -> UptimeStore | None:
        """Persisted per-target uptime buckets; None when no store is open."""
        ...

    @property
    def overload(self) -> LoopLagMonitor | None:
        """Guardian's own event-loop lag (None where nothing measures it)."""
        ...

    def recovery_snapshot(self) -> dict[str, dict[str, Any]]:
        """Per target with a service: attempts, last_restart (ISO|None), breaker_open,
        consecutive_failures (more keys allowed)."""
        ...

    async def restart(self, target: str) -> str:
        """Restart now (manual: resets the breaker) and wait for the outcome. KeyError for
        an unknown target."""
        ...

    async def request_restart(self, target: str) -> RestartTicket:
        """Start (or join the one in flight of) a manual restart and return at once: the
        API's 202. KeyError for an unknown target, RuntimeError when not running."""
        ...

    async def run_checks(self, target: str | None = None) -> list[CheckResult]:
        """Run every check (of one target) once now. KeyError for an unknown target."""
        ...

    def incidents(self, limit: int = 50, include_resolved: bool = False) -> list[dict[str, Any]]:
        ...

    def incident(self, incident_id: int) -> dict[str, Any] | None:
        """One incident with ``report_markdown`` (None when no report was written)."""
        ...

    def queue_views(self) -> dict[str, QueueView]:
        """Per ComfyUI target with a queue journal: its queue, restores and quarantine."""
        ...

    async def queue_command(self, target: str, command: str,
                            prompt_id: str | None) -> QueueListing:
        """``list``, ``release`` or ``drop`` (a quarantined prompt). KeyError if unknown."""
        ...


RestartFn = Callable[[str], Awaitable[str]]
RunChecksFn = Callable[[str | None], Awaitable[list[CheckResult]]]


@dataclass
class StaticView:
    """A :class:`GuardianView` over a given State and fixed recovery/incident data.

    Used by the API's tests and benchmark, and handy wherever the API must be served
    without a scheduler (e.g. a read-only replay). Actions are recorded in ``restarts``;
    pass ``restart_fn`` / ``run_checks_fn`` to make them do real work.
    """

    config: Config
    state: State
    started_at: datetime | None = field(default_factory=lambda: datetime.now(UTC))
    recovery: dict[str, dict[str, Any]] = field(default_factory=dict)
    incident_list: list[dict[str, Any]] = field(default_factory=list)
    restart_fn: RestartFn | None = None
    run_checks_fn: RunChecksFn | None = None
    restarts: list[str] = field(default_factory=list)
    uptime_counts: UptimeStore | None = None
    overload: LoopLagMonitor | None = None
    _desk: RestartDesk | None = field(default=None, init=False, repr=False)

    def _known(self, target: str) -> None:
        if target not in {t.name for t in self.config.targets}:
            raise KeyError(target)

    def recovery_snapshot(self) -> dict[str, dict[str, Any]]:
        return {name: dict(info) for name, info in self.recovery.items()}

    async def restart(self, target: str) -> str:
        self._known(target)
        self.restarts.append(target)
        if self.restart_fn is not None:
            return await self.restart_fn(target)
        return f"restart of {target} requested"

    async def request_restart(self, target: str) -> RestartTicket:
        self._known(target)
        if self._desk is None:
            self._desk = RestartDesk(self._run_restart, lambda _: True)
        ticket = self._desk.request(target)
        if not ticket.coalesced:
            self.restarts.append(target)
        return ticket

    async def _run_restart(self, target: str) -> str:
        if self.restart_fn is not None:
            return await self.restart_fn(target)
        return f"restart of {target} requested"

    async def run_checks(self, target: str | None = None) -> list[CheckResult]:
        if target is not None:
            self._known(target)
        if self.run_checks_fn is not None:
            return await self.run_checks_fn(target)
        return self.state.results(target)

    def incidents(self, limit: int = 50, include_resolved: bool = False) -> list[dict[str, Any]]:
        found = [
            i for i in self.incident_list if include_resolved or i.get("status") != "resolved"
        ]
        found.sort(key=lambda i: i["id"] if isinstance(i.get("id"), int) else -1, reverse=True)
        return [{k: v for k, v in i.items() if k != "report_markdown"} for i in found[:limit]]

    def incident(self, incident_id: int) -> dict[str, Any] | None:
        for i in self.incident_list:
            if i.get("id") == incident_id:
                return {"report_markdown": None, **i}
        return None

    def queue_views(self) -> dict[str, QueueView]:
        return {}

    async def queue_command(self, target: str, command: str,
                            prompt_id: str | None) -> QueueListing:
        raise KeyError(target)
