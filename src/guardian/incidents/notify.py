"""Incident notifications through apprise, never in the way of checks or recovery.

``submit`` returns at once: delivery runs in a background task, apprise's blocking call
in a worker thread under a timeout, with retries and backoff on the injected clock. One
message per transition per incident (dedupe, also across restarts via the store) and at
most ``rate_limit_per_hour`` messages per target, so a crash loop cannot flood a phone.
Every attempt is recorded in the store with the URL reduced to its scheme.

Fan-out (one switch, one dead upstream: 1000 targets failing in the same second) is one
page, not 1000: a message opens a ``group_window``; news of *other* targets within it is
held and goes out as one grouped message when it ends ("999 targets: 999 opened, ..."
naming the first few, the most common summaries, the rest as "+n more"), and a window
that flushed something opens the next one, so a storm lasting minutes is one message per
window. A lone failure still notifies at once, and the target that opened the window
keeps getting its own messages at once (its escalation is not held behind a window it
started). One target's messages never overtake each other: each delivery waits for the
earlier ones of its targets.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter, deque
from collections.abc import Callable, Coroutine, Sequence
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

from guardian.config.schema import Config
from guardian.core.clock import Clock, SystemClock
from guardian.core.events import IncidentEvent, IncidentTransition
from guardian.incidents.redact import redact, redact_url
from guardian.incidents.store import Store
from guardian.support import blocking

log = logging.getLogger("guardian.notify")

Sender = Callable[[str, str, str], tuple[bool, str]]  # (url, title, body) -> (ok, error)

EVENT_NAMES = {
    IncidentTransition.OPENED: "open",
    IncidentTransition.ESCALATED: "escalate",
    IncidentTransition.GAVE_UP: "escalate",
    IncidentTransition.RESOLVED: "resolve",
    IncidentTransition.QUARANTINED: "quarantine",
}
HOUR = 3600.0
MAX_NAMES = 20  # targets named per transition in a grouped message; the rest are counted
MAX_SUMMARIES = 5  # most common summaries quoted in a grouped message
MAX_SUMMARY = 200  # characters of one quoted summary
RECORD_CHUNK = 200  # notification rows written between yields to the event loop


def _result_errors(result: object) -> list[str]:
    """Warnings apprise logged for this call. Apprise 2 returns them with the result (its
    plugins run in its own worker threads, so a log handler could not tell calls apart);
    apprise 1 returns a bare bool and the reason is only in its log."""
    messages: list[str] = []
    try:
        for service in result:  # type: ignore[attr-defined]
            logs = getattr(service, "logs", None)
            entries = logs() if callable(logs) else (logs or ())
            for entry in entries:
                if str(getattr(entry, "level", "")).upper() in ("WARNING", "ERROR", "CRITICAL"):
                    messages.append(str(getattr(entry, "message", entry)))
    except TypeError:
        pass
    return messages


def apprise_send(url: str, title: str, body: str) -> tuple[bool, str]:
    """Deliver one message to one apprise URL (blocking). Returns (ok, error)."""
    import apprise

    try:
        sender = apprise.Apprise()
        if not sender.add(url):
            return False, "not a valid apprise URL"
        result = sender.notify(title=title, body=body)
    except Exception as e:  # a plugin bug must not escape into Guardian
        return False, redact(f"{type(e).__name__}: {e}")
    if result:
        return True, ""
    errors = _result_errors(result)
    return False, redact(errors[-1] if errors else "delivery failed (see the apprise log)")


def channel_label(url: str, index: int) -> str:
    """``#1 json://[REDACTED]``: identifies a configured URL without revealing it."""
    return f"#{index + 1} {redact_url(url)}"


class Notifier:
    def __init__(
        self,
        config: Config,
        store: Store | None = None,
        clock: Clock | None = None,
        *,
        sender: Sender | None = None,
        backoff: float = 2.0,
    ) -> None:
        self.config = config
        self.store = store
        self.clock = clock or SystemClock()
        self.sender = sender or apprise_send
        self.backoff = backoff
        ns = config.notify
        self.urls = [u.get_secret_value() for u in ns.urls]
        self.events = set(ns.events)
        self.rate_limit = ns.rate_limit_per_hour
        self.retries = ns.retries
        self.timeout = ns.timeout
        self.group_window = ns.group_window
        self._sent: dict[str, deque[float]] = {}  # target -> monotonic times of messages
        self._done: set[tuple[int, str]] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._last: dict[str, asyncio.Task[None]] = {}  # target -> its latest delivery
        # Grouping: the open window's end (monotonic), the target whose message opened it
        # (sent at once), and the news of other targets held for the grouped message.
        self._window_end: float | None = None
        self._opener: str | None = None
        self._held: list[IncidentEvent] = []
        self._held_targets: set[str] = set()
        self._flusher: asyncio.Task[None] | None = None
        self.grouped = 0  # grouped messages started (for the bench and tests)

    # ------------------------------------------------------------------ incidents

    def submit(self, event: IncidentEvent) -> asyncio.Task[None] | None:
        """Queue delivery of ``event``; returns the background task (None: not sent)."""
        name = EVENT_NAMES.get(event.transition)
        if not self.urls or name not in self.events:
            return None
        key = (event.incident_id, str(event.transition))
        # One message per transition of an incident; each quarantined prompt is news of
        # its own (published once, by the restore that quarantined it).
        once = event.transition is not IncidentTransition.QUARANTINED
        if once and (key in self._done or (
                self.store is not None and self.store.notified(*key))):
            return None
        self._done.add(key)
        if not self._allow(event.target):
            log.warning(
                "notification for %s suppressed: over %d per hour",
                event.target,
                self.rate_limit,
                extra={
                    "event": "notify_rate_limited",
                    "target": event.target,
                    "incident": event.incident_id,
                },
            )
            self._record(event, "(all)", False, f"rate limited ({self.rate_limit} per hour)")
            return None
        if self.group_window <= 0:
            return self._start([event])
        if self._flusher is not None:  # a window is open
            if event.target in self._held_targets or event.target != self._opener:
                self._held.append(event)  # behind its own held news, or another target's
                self._held_targets.add(event.target)
                return self._flusher
            return self._start([event])  # the window's own target: at once
        self._window_end = self.clock.monotonic() + self.group_window
        self._opener = event.target
        self._flusher = asyncio.get_running_loop().create_task(self._flush_windows())
        return self._start([event])

    def _allow(self, target: str) -> bool:
        now = self.clock.monotonic()
        sent = self._sent.setdefault(target, deque())
        while sent and now - sent[0] >= HOUR:
            sent.popleft()
        if len(sent) >= self.rate_limit:
            return False
        sent.append(now)
        return True

    @staticmethod
    def message(event: IncidentEvent) -> tuple[str, str]:
        """(title, body) for an incident transition, redacted."""
        title = f"[Guardian] {event.target}: incident #{event.incident_id} {event.transition}"
        body = [
            f"Target: {event.target}",
            f"Transition: {event.transition}",
            f"Severity: {event.severity}",
            f"Time: {event.time.strftime('%Y-%m-%d %H:%M:%S UTC')}",
            f"Summary: {event.summary}",
        ]
        if event.report_path:
            body.append(f"Report: {event.report_path}")
        return redact(title), redact("\n".join(body))

    @staticmethod
    def group_message(events: Sequence[IncidentEvent]) -> tuple[str, str]:
        """(title, body) of one message for many targets' transitions, redacted."""
        by_transition: dict[IncidentTransition, dict[str, None]] = {}  # ordered sets
        for e in events:
            by_transition.setdefault(e.transition, {})[e.target] = None
        targets = {e.target for e in events}
        order = sorted(by_transition, key=list(IncidentTransition).index)
        words = {t: str(t).replace("_", " ") for t in order}  # "gave up"
        counts = ", ".join(f"{len(by_transition[t])} {words[t]}" for t in order)
        title = f"[Guardian] {len(targets)} targets: {counts}"
        first = min(e.time for e in events).strftime("%Y-%m-%d %H:%M:%S UTC")
        last = max(e.time for e in events).strftime("%H:%M:%S UTC")
        body = [f"{len(events)} incident transitions of {len(targets)} targets, {first} to {last}."]
        for t in order:
            names = list(by_transition[t])
            more = len(names) - MAX_NAMES
            shown = ", ".join(names[:MAX_NAMES]) + (f" (+{more} more)" if more > 0 else "")
            body.append(f"{words[t].capitalize()} ({len(names)}): {shown}")
        latest = {e.target: e for e in events}  # each target's newest news
        severities = Counter(e.severity for e in latest.values())
        body.append("Severity: " + ", ".join(f"{s} {n}" for s, n in severities.most_common()))
        body.append("Most common summaries:")
        for summary, n in Counter(e.summary for e in latest.values()).most_common(MAX_SUMMARIES):
            cut = summary if len(summary) <= MAX_SUMMARY else summary[:MAX_SUMMARY] + "…"
            body.append(f"- {n} target(s): {cut}")
        reports = {str(Path(e.report_path).parent) for e in events if e.report_path}
        if reports:
            body.append("Reports: " + ", ".join(sorted(reports)[:3]))
        body.append("Details: guardian incidents (or /api/incidents).")
        return redact(title), redact("\n".join(body))

    # ------------------------------------------------------------------ grouping

    async def _flush_windows(self) -> None:
        """Wait out each window; send what it held; a window that held news opens the next."""
        try:
            while self._window_end is not None:
                await self.clock.sleep(max(0.0, self._window_end - self.clock.monotonic()))
                if not self._flush_held():
                    return
                self._window_end = self.clock.monotonic() + self.group_window
        finally:
            if self._flusher is asyncio.current_task():
                self._flusher = None
                self._window_end = self._opener = None

    def _flush_held(self) -> bool:
        """Start the delivery of the held news; False when nothing was held."""
        held, self._held = self._held, []
        targets, self._held_targets = self._held_targets, set()
        if not held:
            return False
        # One target only: its own messages, in order. Several: one grouped message.
        self._opener = next(iter(targets)) if len(targets) == 1 else None
        if len(targets) == 1:
            for e in held:
                self._start([e])
        else:
            self._start(held)
        return True

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _start(self, events: list[IncidentEvent]) -> asyncio.Task[None]:
        """Deliver one message for ``events`` after the earlier messages of their targets."""
        targets = {e.target for e in events}
        before = {self._last[t] for t in targets if t in self._last}
        task = self._spawn(self._deliver(events, before))
        for t in targets:
            self._last[t] = task

        def forget(done: asyncio.Task[None]) -> None:
            for t in targets:
                if self._last.get(t) is done:
                    del self._last[t]

        task.add_done_callback(forget)
        return task

    async def _deliver(
        self, events: list[IncidentEvent], before: set[asyncio.Task[None]]
    ) -> None:
        # One target's messages go out in order (opened before escalated before resolved).
        if before:
            await asyncio.wait(before)
        if len(events) == 1:
            title, body = self.message(events[0])
        else:
            self.grouped += 1
            title, body = self.group_message(events)
        await asyncio.gather(
            *(
                self._send_with_retries(events, i, url, title, body)
                for i, url in enumerate(self.urls)
            )
        )

    async def _send_with_retries(
        self, events: list[IncidentEvent], index: int, url: str, title: str, body: str
    ) -> None:
        label = channel_label(url, index)
        first = events[0]
        what = (
            f"incident {first.incident_id} {first.transition}"
            if len(events) == 1
            else f"{len(events)} incident transitions (grouped)"
        )
        where = {"target": first.target, "incident": first.incident_id} if len(events) == 1 else {}
        for attempt in range(self.retries + 1):
            ok, error = await self._send_once(url, title, body)
            await self._record_all(events, label, ok, error)
            if ok:
                log.info(
                    "notified %s of %s", label, what, extra={"event": "notified", **where}
                )
                return
            log.warning(
                "notification to %s of %s failed (attempt %d): %s",
                label,
                what,
                attempt + 1,
                error,
                extra={"event": "notify_failed", **where},
            )
            if attempt < self.retries:
                await self.clock.sleep(self.backoff * 2**attempt)

    async def _record_all(
        self, events: list[IncidentEvent], channel: str, ok: bool, error: str
    ) -> None:
        """One row per incident (dedupe across restarts), yielding now and then: a
        grouped message for 1000 incidents must not stall the checks."""
        for i, event in enumerate(events):
            if i and i % RECORD_CHUNK == 0:
                await asyncio.sleep(0)
            self._record(event, channel, ok, error)

    async def _send_once(self, url: str, title: str, body: str) -> tuple[bool, str]:
        try:  # a daemon thread of its own: a hung SMTP/webhook cannot block shutdown
            return await blocking.pool("notify").run(
                partial(self.sender, url, title, body), self.timeout, what="notification"
            )
        except (TimeoutError, blocking.CallTimedOut):
            return False, f"timed out after {self.timeout:g} s"
        except blocking.BlockingError as e:  # every notify worker stuck on earlier sends
            return False, str(e)
        except Exception as e:
            return False, redact(f"{type(e).__name__}: {e}")

    def _record(self, event: IncidentEvent, channel: str, ok: bool, error: str) -> None:
        if self.store is None:
            return
        try:
            self.store.add_notification(
                event.incident_id,
                event.target,
                channel,
                str(event.transition),
                self.clock.now(),
                ok,
                error,
            )
        except Exception:
            log.exception("recording a notification attempt failed")

    # ------------------------------------------------------------------ test & shutdown

    async def send_test(self) -> list[tuple[str, bool, str]]:
        """Send a test message to every configured URL now: (label, ok, error) each."""
        title = "[Guardian] test notification"
        now: datetime = self.clock.now()
        body = f"Guardian can reach this channel. Sent {now.strftime('%Y-%m-%d %H:%M:%S UTC')}."
        results = await asyncio.gather(*(self._send_once(url, title, body) for url in self.urls))
        out: list[tuple[str, bool, str]] = []
        for i, (url, (ok, error)) in enumerate(zip(self.urls, results, strict=True)):
            label = channel_label(url, i)
            out.append((label, ok, error))
            if self.store is not None:
                try:
                    self.store.add_notification(None, "-", label, "test", now, ok, error)
                except Exception:
                    log.exception("recording a test notification failed")
        return out

    async def idle(self) -> None:
        """Wait for in-flight deliveries (tests, orderly shutdown); held news stays held."""
        while self._tasks:
            await asyncio.gather(*set(self._tasks), return_exceptions=True)

    async def drain(self) -> None:
        """Wait until every window has ended and every delivery is done (on the clock)."""
        while self._flusher is not None or self._tasks:
            if self._flusher is not None:
                await asyncio.gather(self._flusher, return_exceptions=True)
            await self.idle()

    @property
    def held(self) -> int:
        """Transitions waiting for their window's grouped message."""
        return len(self._held)

    async def aclose(self, timeout: float = 5.0) -> None:
        """Send what a window holds now (nothing is lost on shutdown), then wait for the
        deliveries (bounded)."""
        if self._flusher is not None:
            self._flusher.cancel()
            await asyncio.gather(self._flusher, return_exceptions=True)
        self._flush_held()
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=timeout)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
