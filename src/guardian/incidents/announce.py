"""The report queue: an incident's report first, then its announcements, in order.

Apart from the tracker (which decides *what* happens to an incident) because this is
*when* it is written and told: ``REPORT_WORKERS`` reports at a time, first come first
served, one entry per incident, and no announcement held longer than ``report_timeout``.
See :mod:`guardian.incidents.tracker` for why.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from guardian.core.clock import Clock
from guardian.core.events import IncidentTransition

REPORT_WORKERS = 2  # reports written at once (the report blocking pool has two threads)


@dataclass
class _Job:
    """An incident's queued work: a report to write, then announcements in order."""

    since: float  # monotonic: when it was queued (its news waits report_timeout at most)
    steps: deque[IncidentTransition] = field(default_factory=deque)
    report_due: bool = False  # write (again) before the next announcement
    running: bool = False


class ReportQueue:
    """Per-incident entries of "write the report, then announce", worked by a few workers."""

    def __init__(
        self,
        clock: Clock,
        report_timeout: float,
        write: Callable[[int], Awaitable[None]],
        announce: Callable[[int, IncidentTransition], None],
        spawn: Callable[[Coroutine[Any, Any, None]], asyncio.Task[None]],
    ) -> None:
        self.clock = clock
        self.report_timeout = report_timeout
        self._write_report = write
        self._announce = announce
        self._spawn = spawn
        self._jobs: dict[int, _Job] = {}  # incident id -> queued work, oldest first
        self._workers = 0
        self._overdue: asyncio.Task[None] | None = None  # announces news queued too long
        self._jobs_changed = asyncio.Event()

    def __len__(self) -> int:
        return len(self._jobs)

    def __contains__(self, incident_id: int) -> bool:
        return incident_id in self._jobs

    def put(self, incident_id: int, transition: IncidentTransition, *, report: bool) -> None:
        """Announce ``transition`` after the incident's queued work (and a report first)."""
        job = self._jobs.get(incident_id)
        if job is None:
            job = self._jobs[incident_id] = _Job(self.clock.monotonic())
        job.steps.append(transition)
        job.report_due = job.report_due or report
        if not job.running and self._workers < REPORT_WORKERS:
            self._workers += 1
            self._spawn(self._work())
        if self._overdue is None:
            self._overdue = self._spawn(self._announce_overdue())

    async def _announce_overdue(self) -> None:
        """News of entries waiting longer than report_timeout goes out now, without the
        report's path; the report itself stays queued."""
        try:
            while self._jobs:
                now = self.clock.monotonic()
                waiting = [(i, j) for i, j in self._jobs.items() if not j.running and j.steps]
                for incident_id, job in waiting:
                    if now - job.since < self.report_timeout:
                        break  # oldest first: the rest are younger
                    self._announce_steps(incident_id, job)
                later = [j.since for j in self._jobs.values() if not j.running and j.steps]
                delay = (min(later) + self.report_timeout - now) if later else self.report_timeout
                self._jobs_changed.clear()
                sleeper = asyncio.ensure_future(self.clock.sleep(max(delay, 0.001)))
                changed = asyncio.ensure_future(self._jobs_changed.wait())
                try:
                    await asyncio.wait({sleeper, changed}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    sleeper.cancel()
                    changed.cancel()
        finally:
            self._overdue = None

    async def _work(self) -> None:
        try:
            while True:
                # At most REPORT_WORKERS entries are running: the first free one is near.
                found = next(((i, j) for i, j in self._jobs.items() if not j.running), None)
                if found is None:
                    return
                incident_id, job = found
                job.running = True
                try:
                    await self._run_job(incident_id, job)
                finally:
                    del self._jobs[incident_id]
                    self._jobs_changed.set()
        finally:
            self._workers -= 1

    async def _run_job(self, incident_id: int, job: _Job) -> None:
        while job.steps or job.report_due:
            if job.report_due:
                job.report_due = False
                await self._write_report(incident_id)
            self._announce_steps(incident_id, job, first_only=True)

    def _announce_steps(self, incident_id: int, job: _Job, *, first_only: bool = False) -> None:
        """Announce the entry's waiting news (its first item only, or all), in order."""
        while job.steps:
            transition = job.steps.popleft()
            self._announce(incident_id, transition)
            if first_only:
                return
