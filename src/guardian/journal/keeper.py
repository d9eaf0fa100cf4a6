"""The queue journals of all ComfyUI targets, wired to recovery's events.

It hears, on the bus, what recovery does: ``EXITED`` (the process died: a death),
``RESTART_STARTED`` (a restart is under way: no restore before it is done; the last
``/queue`` read and the death itself come from :meth:`QueueKeeper.before_restart`, which
recovery awaits before it stops the process), ``RESTART_SUCCEEDED``/``RESTART_FAILED`` (the
restored server may answer now) and the ladder's ``REMEDIATION_FAILED`` for a stuck prompt
(that prompt is never re-run). It publishes ``QUEUE_RESTORED`` and ``PROMPT_QUARANTINED``
recovery events, which the incident timeline records.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any

from guardian.checks.comfyui.client import ComfyUIClient, ComfyUIError
from guardian.checks.comfyui.health import ComfyUICheckConfig
from guardian.config.schema import Config
from guardian.core.clock import Clock
from guardian.core.events import Event, EventBus, RecoveryEvent, RecoveryKind
from guardian.journal.follower import TargetJournal
from guardian.journal.restore import RestoreOutcome, submit_body
from guardian.journal.store import JournalStore, Quarantined
from guardian.services.base import ServiceBackend
from guardian.store.db import Database

log = logging.getLogger("guardian.journal")


@dataclass(frozen=True)
class QueueView:
    """One target's queue as ``/api/health`` and ``guardian queue`` show it (no secrets)."""

    target: str
    online: bool
    running: int
    pending: int
    journaled: int
    restore_due: bool
    restored: int  # at the last restore
    restore_total: int
    restored_at: str | None
    quarantined: int
    error: str | None
    journal: list[dict[str, object]]  # prompt_id, state, number, client_id


class QueueKeeper:
    """Builds one :class:`TargetJournal` per ComfyUI target and follows recovery."""

    def __init__(self, config: Config, bus: EventBus, clock: Clock, db: Database,
                 backends: Mapping[str, ServiceBackend] | None = None) -> None:
        self.bus = bus
        self.clock = clock
        self.store = JournalStore(db)
        self.journals: dict[str, TargetJournal] = {}
        self.restored_total: Counter[str] = Counter()
        self.quarantined_total: Counter[str] = Counter()
        self.lost_total: Counter[tuple[str, str]] = Counter()
        report_dir = config.guardian.report_dir
        for target in config.targets:
            if not target.queue.enabled:
                continue
            check = next((c for c in target.checks
                          if isinstance(c, ComfyUICheckConfig) and c.enabled), None)
            if check is None:
                continue
            backend = (backends or {}).get(target.name)
            self.journals[target.name] = TargetJournal(
                target.name, check.url, check.timeout, target.queue, self.store, clock,
                report_dir, self._report, None if backend is None else _pid_of(backend),
                dry_run=config.guardian.dry_run)
        self._tasks: list[asyncio.Task[None]] = []
        self._background: set[asyncio.Task[None]] = set()
        self._request: Callable[[str, str], object] | None = None
        self._planned: dict[str, asyncio.Task[None]] = {}  # one restart between jobs each
        self._unsubscribe = bus.subscribe(self._on_event)

    async def start(self, restart: Callable[[str], Awaitable[str]] | None = None,
                    request: Callable[[str, str], object] | None = None) -> None:
        """Follow every target; ``restart`` (recovery's) runs the planned restarts,
        ``request`` (recovery's policy: cooldown, breaker) the ones the ladder wants."""
        self._request = request
        for name, journal in self.journals.items():
            await journal.load()
            self._tasks.append(asyncio.create_task(journal.run(), name=f"journal-{name}"))
            every = journal.cfg.restart_every
            if every is not None and restart is not None:
                self._tasks.append(asyncio.create_task(
                    self._maintain(name, every, restart), name=f"journal-planned-{name}"))

    async def _maintain(self, target: str, every: float,
                        restart: Callable[[str], Awaitable[str]]) -> None:
        """``restart_every``: a planned restart between jobs, against slow leaks."""
        while True:
            await self.clock.sleep(every)
            log.info("%s: planned restart (restart_every %g s)", target, every,
                     extra={"target": target, "event": "planned_restart"})
            said = self.restart_when_idle(target, lambda: restart(target))
            log.info("%s: %s", target, said, extra={"target": target})

    # -------------------------------------------------------------- recovery's events

    def _on_event(self, event: Event) -> None:
        if not isinstance(event, RecoveryEvent):
            return
        journal = self.journals.get(event.target)
        if journal is None:
            return
        kind = event.kind
        if kind is RecoveryKind.EXITED:
            self._spawn(journal.died(f"process exited ({event.reason})"))
        elif kind is RecoveryKind.RESTART_STARTED:
            journal.restarting = True
        elif kind in (RecoveryKind.RESTART_SUCCEEDED, RecoveryKind.RESTART_FAILED):
            journal.restart_done()
        elif (kind is RecoveryKind.REMEDIATION_FAILED
              and event.values.get("restart_between_jobs") is True
              and self._request is not None):
            request = self._request
            target, why = event.target, f"restart between jobs: {event.detail}"[:300]

            async def ask() -> str:
                request(target, why)
                return why
            self.restart_when_idle(target, ask)
        elif (kind is RecoveryKind.REMEDIATION_FAILED
              and event.values.get("condition") == "stuck_running"
              and event.values.get("restart_requested") is True):
            prompt_id = event.values.get("prompt_id")
            if isinstance(prompt_id, str):
                self._spawn(journal.ladder_ended(prompt_id))

    def _spawn(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    async def before_restart(self, target: str) -> None:
        """Recovery awaits this before it restarts ``target``: one more ``/queue`` read."""
        journal = self.journals.get(target)
        if journal is not None:
            await journal.before_restart()

    def _report(self, target: str, outcome: RestoreOutcome,
                quarantined: list[tuple[str, str, str]]) -> None:
        """Count, log and publish what a restore did (the timeline records the events).
        A dry run's is told, never counted: nothing was restored, lost or quarantined."""
        counted = not outcome.dry_run
        if outcome.interrupted is None and counted:
            self.restored_total[target] += len(outcome.restored)
        lost = Counter(reason for _, reason, _ in outcome.lost)
        lost["stuck"] += len(outcome.not_rerun)
        if counted:
            for reason, n in lost.items():
                self.lost_total[(target, reason)] += n
        details = []
        if outcome.dry_run and outcome.would_restore:
            details.append("would re-submit " + ", ".join(outcome.would_restore))
        for pid in outcome.not_rerun:
            details.append(f"prompt {pid} was ended by the ladder for being stuck: not re-run")
        for pid, _, words in outcome.lost:
            details.append(f"prompt {pid} not restored: {words}")
        if outcome.dry_run:
            details.extend(reason for _, _, reason in quarantined)
        headline = outcome.headline()
        log.warning("%s: %s", target, headline, extra={
            "target": target, "event": "queue_restored", "restored": len(outcome.restored),
            "considered": outcome.considered, "skipped": len(outcome.skipped),
            "dry_run": outcome.dry_run})
        self.bus.publish(RecoveryEvent(
            target=target, kind=RecoveryKind.QUEUE_RESTORED, time=self.clock.now(),
            reason=headline, detail="; ".join(details)[:2000],
            values={"restored": len(outcome.restored), "considered": outcome.considered,
                    "skipped": len(outcome.skipped), "lost": len(outcome.lost),
                    "quarantined": len(outcome.quarantined),
                    "not_rerun": len(outcome.not_rerun),
                    "interrupted": outcome.interrupted is not None,
                    "dry_run": outcome.dry_run,
                    "would_restore": len(outcome.would_restore),
                    **{f"lost_{reason}": n for reason, n in lost.items() if n}}))
        if outcome.dry_run:
            return
        for pid, saved, reason in quarantined:
            self.quarantined_total[target] += 1
            log.error("%s: %s", target, reason, extra={
                "target": target, "event": "prompt_quarantined", "prompt_id": pid})
            self.bus.publish(RecoveryEvent(
                target=target, kind=RecoveryKind.PROMPT_QUARANTINED, time=self.clock.now(),
                reason=reason, detail=f"saved to {saved}" if saved else "",
                values={"prompt_id": pid, "saved_to": saved}))

    # -------------------------------------------------------------- what readers read

    def view(self, target: str) -> QueueView | None:
        journal = self.journals.get(target)
        if journal is None:
            return None
        state = journal.state
        items = sorted(journal.items.values(), key=lambda x: (x[0] != "running", x[1].number))
        return QueueView(
            target=target, online=journal.online, running=journal.live_running,
            pending=journal.live_pending, journaled=len(journal.items),
            restore_due=state.restore_due, restored=state.restored,
            restore_total=state.restore_total, restored_at=state.restored_at,
            quarantined=journal.quarantined, error=journal.last_error,
            journal=[{"prompt_id": p.prompt_id, "state": st, "number": p.number,
                      "client_id": p.client_id} for st, p in items])

    async def quarantine(self, target: str | None = None) -> list[Quarantined]:
        return await asyncio.to_thread(self.store.quarantined, target)

    async def release(self, target: str, prompt_id: str) -> str:
        """Put a quarantined prompt back on the queue (at its end); KeyError if unknown."""
        journal = self.journals.get(target)
        found = [q for q in await self.quarantine(target) if q.prompt.prompt_id == prompt_id]
        if journal is None or not found:
            raise KeyError(prompt_id)
        if journal.dry_run:
            return f"dry run: would release prompt {prompt_id} to {target}"
        prompt = found[0].prompt
        body = submit_body(prompt, 0.0)
        del body["number"]  # at the end of today's queue, as a new submission
        client = ComfyUIClient(journal.url, journal.timeout, 1 << 20)
        try:
            await client.submit(body, "released prompt")
        except ComfyUIError as exc:
            return f"not released: {exc}"
        finally:
            await client.aclose()
        await asyncio.to_thread(self.store.unquarantine, target, prompt_id)
        journal.quarantined = max(0, journal.quarantined - 1)
        journal.wake()
        return f"released prompt {prompt_id} to {target}"

    async def drop(self, target: str, prompt_id: str) -> str:
        """Forget a quarantined prompt; KeyError if unknown."""
        journal = self.journals.get(target)
        if journal is not None and journal.dry_run:
            if any(q.prompt.prompt_id == prompt_id for q in await self.quarantine(target)):
                return f"dry run: would drop quarantined prompt {prompt_id} of {target}"
            raise KeyError(prompt_id)
        if journal is None or not await asyncio.to_thread(
                self.store.unquarantine, target, prompt_id):
            raise KeyError(prompt_id)
        journal.quarantined = max(0, journal.quarantined - 1)
        return f"dropped quarantined prompt {prompt_id} of {target}"

    def close(self) -> None:
        """Stop listening (a keeper with no journal to keep)."""
        self._unsubscribe()

    def restart_when_idle(self, target: str, restart: Callable[[], Awaitable[str]]) -> str:
        """A planned restart between jobs: wait (in the background, at most
        ``idle_wait_max``) until the prompt running now has finished, then restart; the
        journal re-submits what was pending. KeyError for a target without a journal."""
        journal = self.journals[target]
        planned = self._planned.get(target)
        if planned is not None and not planned.done():
            return f"a restart of {target} between jobs is already planned"
        running = next((p.prompt_id for st, p in journal.items.values() if st == "running"),
                       None)
        if running is None and journal.live_running == 0:
            self._planned[target] = self._spawn(
                self._restart_now(target, restart, "the queue is idle"))
            return f"{target} is idle: restarting now"
        self._planned[target] = self._spawn(
            self._restart_after(target, journal, running, restart))
        return (f"restart of {target} planned once prompt {running} has finished "
                f"(at most {journal.cfg.idle_wait_max:g} s)")

    async def _restart_after(self, target: str, journal: TargetJournal, running: str | None,
                             restart: Callable[[], Awaitable[str]]) -> None:
        deadline = self.clock.monotonic() + journal.cfg.idle_wait_max
        while self.clock.monotonic() < deadline:
            still = any(st == "running" and pid == running
                        for pid, (st, _) in journal.items.items())
            if not still:
                await self._restart_now(target, restart, f"prompt {running} finished")
                return
            await self.clock.sleep(0.1)
        await self._restart_now(target, restart, f"prompt {running} still running after "
                                f"{journal.cfg.idle_wait_max:g} s: restarting anyway")

    async def _restart_now(self, target: str, restart: Callable[[], Awaitable[str]],
                           why: str) -> None:
        log.info("%s: planned restart: %s", target, why,
                 extra={"target": target, "event": "planned_restart"})
        try:
            await restart()
        except Exception as exc:
            log.error("%s: planned restart failed: %s", target, exc, extra={"target": target})

    async def aclose(self) -> None:
        self._unsubscribe()
        for task in [*self._tasks, *self._background]:
            task.cancel()
        await asyncio.gather(*self._tasks, *self._background, return_exceptions=True)
        for journal in self.journals.values():
            await journal.aclose()




def _pid_of(backend: ServiceBackend) -> Callable[[], Awaitable[int | None]]:
    """The supervised process's pid, which tells one ComfyUI instance from the next."""
    async def pid() -> int | None:
        async with asyncio.timeout(5):
            return (await backend.status()).pid
    return pid
