"""Manual restarts asked for over the API: accepted at once, one in flight per target.

Why: a restart waits behind a running automatic one and then for the service's stop and
start; an HTTP caller must not hold a connection for that (nor retry because it timed
out and so ask again). ``POST /api/targets/{name}/restart`` therefore answers 202 with a
ticket at once. Requests for a target whose manual restart is still in flight join it:
fifty clicks (or a script in a loop) make one restart, every caller gets the same ticket
id (``coalesced``), and the outcome is logged (``api_restart_done``) and shown in
``/api/status`` (the target's ``recovery``). Lives on the owner loop (the runtime's).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

log = logging.getLogger("guardian.api")

WATCH = "/api/status"  # where a caller sees the restart go on (targets[].recovery)


@dataclass(frozen=True)
class RestartTicket:
    """An accepted manual restart: its id in this Guardian run, and whether the request
    joined one already in flight."""

    target: str
    id: int
    coalesced: bool

    @property
    def message(self) -> str:
        how = "already in progress, joined" if self.coalesced else "queued"
        return (f"restart #{self.id} of {self.target} {how};"
                f" watch GET {WATCH} (targets.{self.target}.recovery)")


class RestartDesk:
    """Starts manual restarts with ``run`` (a target's outcome message) and coalesces them.

    ``known`` says whether a target can be restarted at all (KeyError otherwise).
    """

    def __init__(self, run: Callable[[str], Awaitable[str]],
                 known: Callable[[str], bool]) -> None:
        self._run = run
        self._known = known
        self._issued = 0
        self._inflight: dict[str, tuple[int, asyncio.Future[str]]] = {}

    def request(self, target: str) -> RestartTicket:
        """Start (or join) the target's manual restart and return at once."""
        return self._start_or_join(target)[0]

    async def run(self, target: str) -> str:
        """Start (or join) it and wait for its outcome (the CLI's old path, the queue
        journal's restart once idle)."""
        return await asyncio.shield(self._start_or_join(target)[1])

    def in_flight(self, target: str) -> int | None:
        held = self._inflight.get(target)
        return None if held is None or held[1].done() else held[0]

    def _start_or_join(self, target: str) -> tuple[RestartTicket, asyncio.Future[str]]:
        if not self._known(target):
            raise KeyError(target)
        held = self._inflight.get(target)
        if held is not None and not held[1].done():
            return RestartTicket(target, held[0], coalesced=True), held[1]
        self._issued += 1
        ticket = RestartTicket(target, self._issued, coalesced=False)
        future = asyncio.ensure_future(self._run(target))
        self._inflight[target] = (ticket.id, future)
        future.add_done_callback(functools.partial(self._finished, ticket))
        return ticket, future

    def _finished(self, ticket: RestartTicket, future: asyncio.Future[str]) -> None:
        held = self._inflight.get(ticket.target)
        if held is not None and held[1] is future:
            del self._inflight[ticket.target]
        extra = {"event": "api_restart_done", "target": ticket.target, "restart_id": ticket.id}
        if future.cancelled():
            log.warning("manual restart #%d of %s cancelled", ticket.id, ticket.target,
                        extra=extra)
            return
        error = future.exception()
        if error is not None:
            log.error("manual restart #%d of %s failed: %s", ticket.id, ticket.target, error,
                      extra=extra)
            return
        log.info("manual restart #%d of %s: %s", ticket.id, ticket.target, future.result(),
                 extra=extra)
