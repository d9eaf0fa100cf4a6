"""One ComfyUI target's queue journal: follows the live queue, restores it after a death.

It learns of changes from the websocket's ``status`` broadcasts (ComfyUI sends one to every
client on each queue change) and reads ``/queue`` then; a periodic read is the fallback
(``fallback_interval`` while the websocket is up, ``poll_interval`` while it is down). An
unchanged body is recognised by its bytes and costs no parse, so an idle or
busy-but-unchanged queue costs next to nothing.

A *death* (the process exited, a restart began, connections refused where ComfyUI had
answered, or a fresh server found where the journal expected its prompts) freezes the
journal: from then on reads only add prompts, never remove them, until the restarted server
answers and :meth:`TargetJournal.restore` has put them back. The flag is in the store, so a
Guardian restarted in between still restores.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from guardian.checks.comfyui.client import (
    ComfyUIClient,
    ComfyUIError,
    QueuedPrompt,
    QueueSnapshot,
    parse_queue_snapshot,
)
from guardian.checks.comfyui.websocket import StatusStream
from guardian.config.schema import QueueJournalConfig
from guardian.core.clock import Clock
from guardian.journal.restore import (
    RestoreOutcome,
    credentials_words,
    known_ids,
    resubmit,
    save_quarantined,
    without_credentials,
)
from guardian.journal.store import JournalStore, TargetState

log = logging.getLogger("guardian.journal")

MAX_FRAME = 1 << 20
FINAL_READ_TIMEOUT = 1.5  # seconds for the last /queue read before a restart
Identity = Callable[[], Awaitable[int | None]]  # the supervised process's pid, if any
Report = Callable[[str, RestoreOutcome, list[tuple[str, str, str]]], None]


class TargetJournal:
    """The journal of one target (see the module docstring)."""

    def __init__(self, target: str, url: str, timeout: float, cfg: QueueJournalConfig,
                 store: JournalStore, clock: Clock, report_dir: Path, report: Report,
                 identity: Identity | None = None, *, dry_run: bool = False) -> None:
        self.target = target
        self.url = url
        self.cfg = cfg
        self.store = store
        self.clock = clock
        self.report_dir = report_dir
        self.report = report  # (target, outcome, quarantined [(id, saved path, reason)])
        self.identity = identity
        self.dry_run = dry_run  # decide and tell, never re-submit nor quarantine
        self.client = ComfyUIClient(url, timeout, cfg.max_body_bytes)
        self.timeout = timeout
        self.items: dict[str, tuple[str, QueuedPrompt]] = {}  # id -> (state, prompt)
        self.state = TargetState()
        self.restarting = False  # a restart Guardian runs is under way: no restore yet
        self.online = False
        self.last_error: str | None = None
        self.live_running = 0
        self.live_pending = 0
        self.quarantined = 0
        self.last_outcome: RestoreOutcome | None = None
        self.reads = 0  # /queue reads (the benchmark counts them)
        self.parses = 0  # of which changed and parsed
        self.journaled_at: float | None = None  # monotonic, after the last change was saved
        self._digest: bytes | None = None
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._stream: StatusStream | None = None
        self._listener: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()  # a status broadcast came (coalesced)
        self._gap = True  # no successful read since start or since the server went away
        self._alive = True  # a server answered since the last death counted

    # ------------------------------------------------------------------ lifecycle

    async def load(self) -> None:
        journaled = await asyncio.to_thread(self.store.load, self.target)
        self.state = await asyncio.to_thread(self.store.state, self.target)
        self.quarantined = len(await asyncio.to_thread(self.store.quarantined, self.target))
        self.items = {p.prompt_id: ("running", p) for p in journaled.running}
        self.items.update({p.prompt_id: ("pending", p) for p in journaled.pending})
        self._alive = not self.state.restore_due

    async def run(self) -> None:
        """Follow forever (cancelled at shutdown)."""
        try:
            while True:
                if self._stream is None:
                    await self._connect()
                async with self._lock:
                    await self._read()
                await self._wait()
        finally:
            await self._close_stream()
            await self.client.aclose()

    def wake(self) -> None:
        self._wake.set()

    async def _connect(self) -> None:
        stream = StatusStream(self.url, f"guardian-journal-{uuid.uuid4().hex[:12]}",
                              timeout=self.timeout, max_frame=MAX_FRAME)
        try:
            await stream.connect()
        except ComfyUIError:
            return
        self._stream = stream
        self._listener = asyncio.create_task(self._listen(stream),
                                             name=f"journal-ws-{self.target}")

    async def _listen(self, stream: StatusStream) -> None:
        """Every status broadcast sets one flag: a burst of them costs one ``/queue`` read,
        and one arriving during a read costs one more."""
        try:
            while True:
                await stream.next_status()
                self._changed.set()
        except ComfyUIError:
            self._changed.set()  # wake the loop: it sees the listener gone and polls

    async def _close_stream(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            await asyncio.gather(self._listener, return_exceptions=True)
            self._listener = None
        if self._stream is not None:
            await self._stream.aclose()
            self._stream = None

    async def _wait(self) -> None:
        """Until a status broadcast, a wake-up, or the fallback read is due."""
        listening = self._listener is not None and not self._listener.done()
        limit = self.cfg.fallback_interval if listening else self.cfg.poll_interval
        if not self._changed.is_set() and not self._wake.is_set():
            waits: list[asyncio.Future[Any]] = [
                asyncio.ensure_future(self._changed.wait()),
                asyncio.ensure_future(self._wake.wait()),
                asyncio.ensure_future(self.clock.sleep(limit)),
            ]
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in waits:
                    task.cancel()
                await asyncio.gather(*waits, return_exceptions=True)
        self._changed.clear()
        self._wake.clear()
        if self._listener is not None and self._listener.done():
            await self._close_stream()  # lost: poll until it reconnects

    # ------------------------------------------------------------------ reading

    async def _read(self, *, final: bool = False) -> None:
        self.reads += 1
        try:
            raw = await self.client.queue_raw()
        except ComfyUIError as exc:
            self._went_away(str(exc))
            return
        digest = hashlib.blake2b(raw, digest_size=16).digest()
        if digest == self._digest and not self._gap and not self.state.restore_due:
            self.journaled_at = self.clock.monotonic()
            return
        self.parses += 1
        try:
            snapshot = parse_queue_snapshot(json.loads(raw))
        except (ValueError, ComfyUIError) as exc:
            self.last_error = f"/queue unreadable: {exc}"[:300]
            return
        if len(snapshot.running) + len(snapshot.pending) > self.cfg.max_prompts:
            self.last_error = f"/queue holds over {self.cfg.max_prompts} prompts: not journaled"
            return
        self._digest = digest
        self.online, self.last_error = True, None
        # A live server answered: the next death is a new one (not so the old server
        # answering while Guardian restarts it: that death is counted already).
        if not self.restarting:
            self._alive = True
        self.live_running, self.live_pending = len(snapshot.running), len(snapshot.pending)
        gap, self._gap = self._gap, False
        if gap and not final:
            await self._check_instance(snapshot)
        if self.state.restore_due:
            await self._follow(snapshot, add_only=True)
            if not self.restarting and not final and self.cfg.restore:
                await self.restore(snapshot)
            elif not self.cfg.restore and not self.restarting:
                await self._set_state(dataclasses.replace(self.state, restore_due=False))
            return
        await self._follow(snapshot, add_only=False)

    def _went_away(self, why: str) -> None:
        self.last_error = why[:300]
        was_online, self.online = self.online, False
        self._gap = True
        self._digest = None
        if was_online and "connection refused" in why:
            # The process is gone (a hung one still accepts): a death, if anything queued.
            task = asyncio.ensure_future(self._death(f"ComfyUI went away: {why}"))
            task.add_done_callback(_log_failure)

    async def _check_instance(self, live: QueueSnapshot) -> None:
        """After a gap: is this the server the journal was following? A supervised one is
        known by its pid; another by knowing none of the journaled prompts and having an
        empty history. A new one means a death nobody saw (Guardian itself was down)."""
        pid: int | None = None
        if self.identity is not None:
            with contextlib.suppress(Exception):
                pid = await self.identity()
        instance = None if pid is None else str(pid)
        if not self.state.restore_due and self.items:
            if instance is not None and self.state.instance is not None:
                if instance != self.state.instance:
                    await self._death(f"ComfyUI was restarted unseen (pid "
                                      f"{self.state.instance} -> {instance})")
            elif await self._fresh(live):
                await self._death("a fresh ComfyUI answered where the journal expected "
                                  "its prompts")
        if instance is not None and instance != self.state.instance:
            await self._set_state(dataclasses.replace(self.state, instance=instance))

    async def _fresh(self, live: QueueSnapshot) -> bool:
        """A server that knows none of the journaled prompts and has an empty history."""
        if live.ids() & set(self.items):
            return False
        try:
            return await self.client.newest_history_id() == ""
        except ComfyUIError:
            return False

    async def _follow(self, snapshot: QueueSnapshot, *, add_only: bool) -> None:
        """Make the journal the live queue (or, while frozen, only add to it)."""
        live: dict[str, tuple[str, QueuedPrompt]] = {p.prompt_id: ("running", p)
                                                     for p in snapshot.running}
        live.update({p.prompt_id: ("pending", p) for p in snapshot.pending})
        removed = [] if add_only else [pid for pid in self.items if pid not in live]
        added = [(st, p) for pid, (st, p) in live.items() if pid not in self.items]
        moved = [] if add_only else [
            (st, p) for pid, (st, p) in live.items()
            if pid in self.items and (self.items[pid][0] != st
                                      or self.items[pid][1].number != p.number)]
        if removed or added or moved:
            await asyncio.to_thread(self.store.apply, self.target, removed, added, moved)
            for pid in removed:
                del self.items[pid]
            for st, p in (*added, *moved):
                self.items[p.prompt_id] = (st, p)
        self.journaled_at = self.clock.monotonic()

    # ------------------------------------------------------------------ deaths

    async def before_restart(self) -> None:
        """The last read before a restart Guardian runs (a prompt queued after the
        follower's last read is journaled), then the death the restart causes.

        The read has :data:`FINAL_READ_TIMEOUT` seconds (recovery cuts all of this at 2 s):
        a hung server's restart is not held up, and its death is counted all the same."""
        self.restarting = True
        try:
            async with asyncio.timeout(FINAL_READ_TIMEOUT):
                async with self._lock:
                    await self._read(final=True)
        except TimeoutError:
            self.last_error = (f"no /queue answer within {FINAL_READ_TIMEOUT:g} s before "
                               "the restart")
            log.warning("%s: %s: restarting with the journal as it was", self.target,
                        self.last_error, extra={"target": self.target,
                                                "event": "final_read_timeout"})
        await self._death("restart")

    def restart_done(self) -> None:
        self.restarting = False
        self._gap = True
        self.wake()

    async def died(self, why: str) -> None:
        async with self._lock:
            await self._death(why)

    async def _death(self, why: str) -> None:
        """Freeze and count: the running prompt was running at one more death. Each death
        is counted once, however many signs of it arrive (an exit, refused connections, the
        restart that follows): a server must have answered in between."""
        if not self._alive:
            return
        self._alive = False
        running = [pid for pid, (st, _) in self.items.items() if st == "running"]
        for pid in running:  # (a copy: a read may change the items meanwhile)
            await asyncio.to_thread(self.store.add_death, self.target, pid)
        if not self.state.restore_due:
            await self._set_state(dataclasses.replace(self.state, restore_due=True,
                                                      death_reason=why[:300]))

    async def ladder_ended(self, prompt_id: str) -> None:
        """The ladder asked for a restart because this prompt is stuck: never re-run it."""
        await self._set_state(dataclasses.replace(self.state, stuck_prompt=prompt_id))

    async def _set_state(self, state: TargetState) -> None:
        self.state = state
        await asyncio.to_thread(self.store.save_state, self.target, state)

    # ------------------------------------------------------------------ restoring

    async def restore(self, live: QueueSnapshot) -> RestoreOutcome:
        """Put the journaled prompts back (see :mod:`guardian.journal.restore`). In a dry
        run, say what would be put back and quarantined, and leave the queue alone."""
        outcome = RestoreOutcome(dry_run=self.dry_run)
        running = sorted((p for st, p in self.items.values() if st == "running"),
                         key=lambda p: p.number)
        pending = sorted((p for st, p in self.items.values() if st == "pending"),
                         key=lambda p: p.number)
        try:
            known = await known_ids(self.client, live, running + pending)
        except ComfyUIError:
            return outcome  # the server went away again: the next answer retries
        plan: list[QueuedPrompt] = []
        quarantined: list[tuple[str, str, str]] = []
        for prompt in running:
            pid = prompt.prompt_id
            if pid in known:
                outcome.skipped.append(pid)
            elif pid == self.state.stuck_prompt:
                outcome.not_rerun.append(pid)
            elif (deaths := await asyncio.to_thread(self.store.deaths, self.target, pid)
                  ) >= self.cfg.quarantine_after:
                reason = (f"prompt {pid} was running at {deaths} crashes: quarantined, "
                          "not re-run")
                if self.dry_run:
                    reason = f"dry run: {reason.replace('quarantined', 'would quarantine')}"
                saved = "" if self.dry_run else await self._quarantine(prompt, reason)
                outcome.quarantined.append(pid)
                quarantined.append((pid, saved, reason))
            else:
                plan.append(prompt)
        for prompt in pending:
            if prompt.prompt_id in known:
                outcome.skipped.append(prompt.prompt_id)
            else:
                plan.append(prompt)
        try:
            uncredentialed = await without_credentials(self.client, plan)
        except ComfyUIError:
            uncredentialed = {}
        for prompt in plan:
            if prompt.prompt_id in uncredentialed:
                outcome.lost.append((prompt.prompt_id, "credentials",
                                     credentials_words(uncredentialed[prompt.prompt_id])))
        plan = [p for p in plan if p.prompt_id not in uncredentialed]
        if self.dry_run:
            outcome.would_restore = [p.prompt_id for p in plan]
            log.warning("%s: dry run: would re-submit %s", self.target,
                        ", ".join(outcome.would_restore) or "nothing",
                        extra={"target": self.target, "event": "queue_restore_dry_run"})
        else:
            await resubmit(self.client, plan, outcome)
        if outcome.restored and not live.running:
            await self._runs_first(outcome.restored[0])
        if outcome.interrupted is not None:
            # Still due: the next restart restores again (into a new server: all of it).
            self.report(self.target, outcome, quarantined)
            return outcome
        done = {*outcome.restored, *outcome.skipped}
        gone = [pid for pid in self.items if pid not in done]
        await asyncio.to_thread(self.store.apply, self.target, gone, [], [])
        for pid in gone:
            del self.items[pid]
        keep = set(self.items) | set(outcome.quarantined)
        await asyncio.to_thread(self.store.forget_deaths, self.target, keep)
        await self._set_state(dataclasses.replace(
            self.state, restore_due=False, stuck_prompt=None, restored=len(outcome.restored),
            restore_total=outcome.considered, restored_at=self.clock.now().isoformat()))
        self.last_outcome = outcome
        self._digest = None
        self.wake()  # read the queue as it is now
        self.report(self.target, outcome, quarantined)
        return outcome

    async def _runs_first(self, prompt_id: str) -> None:
        """The first prompt restored to an idle server starts at once: journal it as
        running, so that a death before the next read is counted against it."""
        moved = [(("running" if pid == prompt_id else "pending"), p)
                 for pid, (st, p) in self.items.items()
                 if (st == "running") != (pid == prompt_id)]
        await asyncio.to_thread(self.store.apply, self.target, [], [], moved)
        for st, p in moved:
            self.items[p.prompt_id] = (st, p)

    async def _quarantine(self, prompt: QueuedPrompt, reason: str) -> str:
        try:
            path = str(await asyncio.to_thread(save_quarantined, self.report_dir,
                                               self.target, prompt, reason))
        except OSError as exc:
            log.warning("%s: quarantined prompt %s not saved: %s", self.target,
                        prompt.prompt_id, exc, extra={"target": self.target})
            path = ""
        await asyncio.to_thread(self.store.quarantine, self.target, prompt, reason,
                                self.clock.now(), path or None)
        self.quarantined += 1
        return path

    async def aclose(self) -> None:
        await self._close_stream()
        await self.client.aclose()


def _log_failure(task: asyncio.Future[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("queue journal: %s", task.exception())
