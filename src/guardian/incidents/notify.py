"""Incident notifications through apprise, never in the way of checks or recovery.

``submit`` returns at once: delivery runs in a background task, apprise's blocking call
in a worker thread under a timeout, with retries and backoff on the injected clock. One
message per transition per incident (dedupe, also across restarts via the store) and at
most ``rate_limit_per_hour`` messages per target, so a crash loop cannot flood a phone.
Every attempt is recorded in the store with the URL reduced to its scheme.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from datetime import datetime
from functools import partial

from guardian import blocking
from guardian.clock import Clock, SystemClock
from guardian.config import Config
from guardian.events import IncidentEvent, IncidentTransition
from guardian.incidents.redact import redact, redact_url
from guardian.incidents.store import Store

log = logging.getLogger("guardian.notify")

Sender = Callable[[str, str, str], tuple[bool, str]]  # (url, title, body) -> (ok, error)

EVENT_NAMES = {
    IncidentTransition.OPENED: "open",
    IncidentTransition.ESCALATED: "escalate",
    IncidentTransition.GAVE_UP: "escalate",
    IncidentTransition.RESOLVED: "resolve",
}
HOUR = 3600.0


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
        self._sent: dict[str, deque[float]] = {}  # target -> monotonic times of messages
        self._done: set[tuple[int, str]] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._order: dict[str, asyncio.Lock] = {}

    # ------------------------------------------------------------------ incidents

    def submit(self, event: IncidentEvent) -> asyncio.Task[None] | None:
        """Queue delivery of ``event``; returns the background task (None: not sent)."""
        name = EVENT_NAMES.get(event.transition)
        if not self.urls or name not in self.events:
            return None
        key = (event.incident_id, str(event.transition))
        if key in self._done or (self.store is not None and self.store.notified(*key)):
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
        task = asyncio.get_running_loop().create_task(self._deliver(event))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

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

    async def _deliver(self, event: IncidentEvent) -> None:
        # One target's messages go out in order (opened before escalated before resolved):
        # asyncio.Lock wakes waiters first-come first-served.
        lock = self._order.setdefault(event.target, asyncio.Lock())
        async with lock:
            await self._deliver_now(event)

    async def _deliver_now(self, event: IncidentEvent) -> None:
        title, body = self.message(event)
        await asyncio.gather(
            *(
                self._send_with_retries(event, i, url, title, body)
                for i, url in enumerate(self.urls)
            )
        )

    async def _send_with_retries(
        self, event: IncidentEvent, index: int, url: str, title: str, body: str
    ) -> None:
        label = channel_label(url, index)
        for attempt in range(self.retries + 1):
            ok, error = await self._send_once(url, title, body)
            self._record(event, label, ok, error)
            if ok:
                log.info(
                    "notified %s of incident %d %s",
                    label,
                    event.incident_id,
                    event.transition,
                    extra={
                        "event": "notified",
                        "target": event.target,
                        "incident": event.incident_id,
                    },
                )
                return
            log.warning(
                "notification to %s failed (attempt %d): %s",
                label,
                attempt + 1,
                error,
                extra={
                    "event": "notify_failed",
                    "target": event.target,
                    "incident": event.incident_id,
                },
            )
            if attempt < self.retries:
                await self.clock.sleep(self.backoff * 2**attempt)

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
        """Wait for in-flight deliveries (tests, orderly shutdown)."""
        while self._tasks:
            await asyncio.gather(*set(self._tasks), return_exceptions=True)

    async def aclose(self, timeout: float = 5.0) -> None:
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=timeout)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
