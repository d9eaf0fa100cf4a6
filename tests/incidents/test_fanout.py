"""Fan-out: 1000 targets failing at once are a few grouped messages and one report each.

Real parts: the SQLite store file, the tracker, the Reporter writing real files, the
Notifier sending through real apprise to a real local webhook. Time is a FakeClock, so
the grouping windows pass in milliseconds.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest
from incidents_helpers import Webhook

from guardian.config.schema import Config
from guardian.core.clock import FakeClock
from guardian.core.events import EventBus, IncidentEvent, IncidentTransition
from guardian.core.result import CheckResult, Status
from guardian.core.state import State
from guardian.incidents.announce import REPORT_WORKERS
from guardian.incidents.notify import MAX_NAMES, Notifier
from guardian.incidents.report import Reporter
from guardian.incidents.store import Store
from guardian.incidents.tracker import IncidentTracker

N = 1000


def fanout_config(
    tmp: Path, urls: list[str], n: int = N, stable_period: float = 60, **notify: Any
) -> Config:
    return Config.model_validate(
        {
            "guardian": {
                "log_dir": str(tmp / "logs"),
                "report_dir": str(tmp / "reports"),
                "state_dir": str(tmp / "state"),
            },
            "escalation": {
                "failures": 3,
                "stable_period": stable_period,
                "report_log_lines": 0,
            },
            "notify": {"urls": urls, "group_window": 10, **notify},
            "targets": [
                {"name": f"t{i:04d}", "checks": [{"kind": "http", "url": "http://10.9.0.1/"}]}
                for i in range(n)
            ],
        }
    )


class CountingReporter(Reporter):
    """The real Reporter, counting writes, the most at once and snapshots taken."""

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.writes: list[int] = []
        self.running = 0
        self.most = 0

    async def write(self, incident_id: int, *, capture: bool = True) -> Path:
        self.running += 1
        self.most = max(self.most, self.running)
        try:
            self.writes.append(incident_id)
            return await super().write(incident_id, capture=capture)
        finally:
            self.running -= 1


class Rig:
    def __init__(self, tmp: Path, config: Config) -> None:
        self.config = config
        self.clock = FakeClock()
        self.bus = EventBus()
        self.state = State(config, self.bus)
        self.store = Store.from_config(config, now=self.clock.now)
        self.snapshots = 0
        lock = threading.Lock()

        def snapshot() -> dict[str, list[str]]:
            with lock:
                self.snapshots += 1
            return {"Memory": ["ram: fine"]}

        self.reporter = CountingReporter(config, self.store, snapshot=snapshot, clock=self.clock)
        self.notifier = Notifier(config, self.store, self.clock)
        self.tracker = IncidentTracker(
            config, self.store, self.bus, self.clock, self.reporter, self.notifier
        )
        self.events: list[IncidentEvent] = []
        self.bus.subscribe(
            lambda e: self.events.append(e) if isinstance(e, IncidentEvent) else None
        )

    def all(self, status: Status, reason: str = "connect failed: connection refused") -> None:
        now = self.clock.now()
        for t in self.config.targets:
            self.state.record(CheckResult(t.name, "http", "http", status, reason, {}, now, now, 0))

    async def settle(self) -> None:
        """Reports written and in-flight messages delivered (real threads, real webhook)."""
        await asyncio.wait_for(self.tracker.idle(), 60)
        await asyncio.wait_for(self.notifier.idle(), 60)

    async def close(self) -> None:
        await self.tracker.aclose()
        await self.notifier.aclose()
        self.store.close()


@pytest.mark.timeout(120)
async def test_a_thousand_targets_failing_at_once_are_a_few_messages_and_one_report_each(
    tmp_path: Path, webhook: Webhook
) -> None:
    rig = Rig(tmp_path, fanout_config(tmp_path, [webhook.url()]))
    for _ in range(3):  # three 1 s rounds: every incident opens, then escalates
        rig.all(Status.FAILED)
        await rig.clock.advance(1)
    await rig.settle()
    # At once: the first target's own news (opened, and its escalation); the rest is held.
    assert webhook.titles() == [
        "[Guardian] t0000: incident #1 opened",
        "[Guardian] t0000: incident #1 escalated",
    ]
    assert rig.notifier.held == 2 * (N - 1)
    # One report per incident, two at a time, one snapshot for the whole burst.
    assert sorted(rig.reporter.writes) == list(range(1, N + 1))
    assert rig.reporter.most <= REPORT_WORKERS and rig.snapshots == 1
    files = sorted((tmp_path / "reports").glob("*.md"))
    assert len(files) == N and all(i.report_path for i in rig.store.incidents(limit=2 * N))

    await rig.clock.advance(10)  # the window ends: one grouped message
    await rig.settle()
    titles = webhook.titles()
    assert len(titles) == 3
    assert titles[2] == f"[Guardian] {N - 1} targets: {N - 1} opened, {N - 1} escalated"
    body = webhook.bodies[2]["message"]
    assert f"Opened ({N - 1}): t0001, t0002," in body and f"(+{N - 1 - MAX_NAMES} more)" in body
    assert f"- {N - 1} target(s): http failed 3 times in a row: connect failed" in body
    assert str(tmp_path / "reports") in body
    # The store says every incident was told, opened and escalated, exactly once.
    rows = rig.store.notifications()
    assert len(rows) == 2 * N and all(r.ok for r in rows)
    assert {(r.incident_id, r.transition) for r in rows} == {
        (i, t) for i in range(1, N + 1) for t in ("opened", "escalated")
    }

    # Still failing a while: nothing new to say, nothing rewritten.
    for _ in range(3):
        rig.all(Status.FAILED)
        await rig.clock.advance(1)
    await rig.settle()
    assert len(webhook.titles()) == 3 and len(rig.reporter.writes) == N
    assert len(list((tmp_path / "reports").glob("*.md"))) == N

    # The upstream comes back: every incident resolves after the stable period.
    rig.all(Status.OK)
    await rig.clock.advance(60)
    rig.all(Status.OK)
    await rig.settle()
    await rig.clock.advance(10)
    await rig.settle()
    titles = webhook.titles()
    assert titles[3] == "[Guardian] t0000: incident #1 resolved"  # its window had closed
    assert titles[4:] == [f"[Guardian] {N - 1} targets: {N - 1} resolved"]
    assert all(i.status == "resolved" for i in rig.store.incidents(limit=2 * N))
    await rig.clock.advance(20)
    await asyncio.wait_for(rig.notifier.drain(), 10)  # the empty window closed
    await rig.close()


async def test_a_single_failure_still_notifies_at_once(tmp_path: Path, webhook: Webhook) -> None:
    rig = Rig(tmp_path, fanout_config(tmp_path, [webhook.url()], n=3))
    now = rig.clock.now()
    failed = Status.FAILED
    rig.state.record(CheckResult("t0001", "http", "http", failed, "refused", {}, now, now, 0))
    await rig.settle()  # no clock advance: not held behind any window
    assert webhook.titles() == ["[Guardian] t0001: incident #1 opened"]
    # Another target failing within the window is held, then sent as its own message.
    rig.state.record(CheckResult("t0002", "http", "http", failed, "refused", {}, now, now, 0))
    await rig.settle()
    assert len(webhook.titles()) == 1 and rig.notifier.held == 1
    await rig.clock.advance(10)
    await rig.settle()
    assert webhook.titles()[1] == "[Guardian] t0002: incident #2 opened"
    await rig.close()


def event(clock: FakeClock, incident_id: int, target: str, t: IncidentTransition,
          summary: str = "http: connection refused") -> IncidentEvent:
    return IncidentEvent(incident_id, target, t, clock.now(), "major", summary)


async def test_held_news_of_one_target_stays_in_order_and_grouped_text_is_redacted(
    tmp_path: Path,
) -> None:
    sent: list[tuple[str, str]] = []

    def sender(url: str, title: str, body: str) -> tuple[bool, str]:
        sent.append((title, body))
        return True, ""

    config = fanout_config(tmp_path, ["json://127.0.0.1:1/x"], n=5)
    clock = FakeClock()
    store = Store.from_config(config, now=clock.now)
    for i in range(5):
        store.open_incident(f"t{i:04d}", clock.now(), "major", "x")
    notifier = Notifier(config, store, clock, sender=sender)
    opened, escalated = IncidentTransition.OPENED, IncidentTransition.ESCALATED
    notifier.submit(event(clock, 1, "t0000", opened))
    notifier.submit(event(clock, 2, "t0001", opened))
    notifier.submit(event(clock, 2, "t0001", escalated, "login postgres://app:hunter2@db/x"))
    notifier.submit(event(clock, 1, "t0000", escalated))  # the window's own target: at once
    await notifier.idle()
    assert [t for t, _ in sent] == [
        "[Guardian] t0000: incident #1 opened",
        "[Guardian] t0000: incident #1 escalated",
    ]
    await clock.advance(10)
    await notifier.idle()
    # Held news of one target only: its own messages, in order.
    assert [t for t, _ in sent[2:]] == [
        "[Guardian] t0001: incident #2 opened",
        "[Guardian] t0001: incident #2 escalated",
    ]
    assert "hunter2" not in sent[3][1] and "[REDACTED]" in sent[3][1]
    # Several targets in the next window: one grouped message, redacted too.
    for i in (3, 4):
        notifier.submit(event(clock, i, f"t{i:04d}", opened, "token=s3cr3t-value failed"))
    await clock.advance(10)
    await notifier.idle()
    title, body = sent[4]
    assert title == "[Guardian] 2 targets: 2 opened" and "t0003, t0004" in body
    assert "s3cr3t-value" not in body and "[REDACTED]" in body
    await clock.advance(10)
    await asyncio.wait_for(notifier.drain(), 5)
    assert len(sent) == 5
    store.close()


async def test_shutdown_sends_what_a_window_holds(tmp_path: Path) -> None:
    sent: list[str] = []

    def sender(url: str, title: str, body: str) -> tuple[bool, str]:
        sent.append(title)
        return True, ""

    config = fanout_config(tmp_path, ["json://127.0.0.1:1/x"], n=3)
    clock = FakeClock()
    store = Store.from_config(config, now=clock.now)
    for i in range(3):
        store.open_incident(f"t{i:04d}", clock.now(), "major", "x")
    notifier = Notifier(config, store, clock, sender=sender)
    for i in range(3):
        notifier.submit(event(clock, i + 1, f"t{i:04d}", IncidentTransition.OPENED))
    await notifier.aclose(timeout=5)  # no clock advance: the held two go out now
    assert sent == ["[Guardian] t0000: incident #1 opened", "[Guardian] 2 targets: 2 opened"]
    assert {r.incident_id for r in store.notifications()} == {1, 2, 3}
    store.close()


async def test_a_report_asked_for_twice_before_its_turn_is_written_once_and_news_keeps_order(
    tmp_path: Path,
) -> None:
    """Escalated, then the breaker gave up, then resolved, all while queued."""
    from incidents_helpers import recovery

    from guardian.core.events import RecoveryKind

    release = asyncio.Event()
    written: list[int] = []

    class Slow:
        async def write(self, incident_id: int, *, capture: bool = True) -> Path:
            if not written:
                await release.wait()  # the first report blocks the queue a while
            written.append(incident_id)
            return tmp_path / f"r{incident_id}.md"

    config = fanout_config(tmp_path, [], n=3, stable_period=0)
    clock = FakeClock()
    bus = EventBus()
    state = State(config, bus)
    store = Store.from_config(config, now=clock.now)
    tracker = IncidentTracker(config, store, bus, clock, Slow())
    events: list[tuple[int, str]] = []
    bus.subscribe(
        lambda e: events.append((e.incident_id, str(e.transition)))
        if isinstance(e, IncidentEvent) else None
    )

    def record(target: str, status: Status) -> None:
        now = clock.now()
        state.record(CheckResult(target, "http", "http", status, "refused", {}, now, now, 0))

    for _ in range(3):
        for t in ("t0000", "t0001", "t0002"):
            record(t, Status.FAILED)
    await asyncio.sleep(0)
    assert tracker.queued_reports == 3
    bus.publish(recovery(clock, RecoveryKind.BREAKER_OPEN, target="t0002", attempt=3))
    record("t0002", Status.OK)  # resolves at once (stable_period 0) while still queued
    assert ("3", "resolved") not in [(str(i), t) for i, t in events]
    release.set()
    await tracker.idle()
    assert written == [1, 2, 3]  # once each, #3 with its latest state (gave up)
    assert [t for i, t in events if i == 3] == ["opened", "escalated", "gave_up", "resolved"]
    assert tracker.queued_reports == 0
    await tracker.aclose()
    store.close()


async def test_news_never_waits_longer_than_report_timeout_behind_hung_reports(
    tmp_path: Path,
) -> None:
    """A hung log drive stalls every report: the escalations still go out, without paths."""
    release = asyncio.Event()
    written: list[int] = []

    class Hung:
        async def write(self, incident_id: int, *, capture: bool = True) -> Path:
            await release.wait()
            written.append(incident_id)
            return tmp_path / f"r{incident_id}.md"

    config = fanout_config(tmp_path, [], n=6)
    clock = FakeClock()
    bus = EventBus()
    state = State(config, bus)
    store = Store.from_config(config, now=clock.now)
    # Real seconds for the hung writes' own timeout (asyncio.wait_for), fake for the queue.
    tracker = IncidentTracker(config, store, bus, clock, Hung(), report_timeout=30)
    escalated: list[tuple[int, str | None]] = []
    bus.subscribe(
        lambda e: escalated.append((e.incident_id, e.report_path))
        if isinstance(e, IncidentEvent) and e.transition is IncidentTransition.ESCALATED
        else None
    )
    for _ in range(3):
        for t in config.targets:
            now = clock.now()
            state.record(CheckResult(t.name, "http", "http", Status.FAILED, "x", {}, now, now, 0))
    await clock.advance(29)
    assert escalated == []  # waiting for their reports
    await clock.advance(1)
    # Two are being written (hung); the four still queued are announced now.
    assert sorted(i for i, _ in escalated) == [3, 4, 5, 6]
    assert all(path is None for _, path in escalated)
    release.set()
    await tracker.idle()
    assert sorted(written) == [1, 2, 3, 4, 5, 6]  # every report still written, once
    assert sorted(i for i, _ in escalated) == [1, 2, 3, 4, 5, 6]
    assert [p for i, p in escalated if i in (1, 2)] == [str(tmp_path / "r1.md"),
                                                         str(tmp_path / "r2.md")]
    assert store.incident(6).report_path == str(tmp_path / "r6.md")  # type: ignore[union-attr]
    await tracker.aclose()
    store.close()


async def test_a_long_failing_incident_writes_its_count_every_few_seconds_not_every_failure(
    tmp_path: Path,
) -> None:
    from guardian.incidents.tracker import COUNT_EVERY

    config = fanout_config(tmp_path, [], n=1)
    clock = FakeClock()
    bus = EventBus()
    state = State(config, bus)
    store = Store.from_config(config, now=clock.now)
    tracker = IncidentTracker(config, store, bus, clock)
    stored: list[int] = []
    for _ in range(30):
        now = clock.now()
        state.record(CheckResult("t0000", "http", "http", Status.FAILED, "x", {}, now, now, 0))
        stored.append(store.incident(1).failure_count)  # type: ignore[union-attr]
        await clock.advance(1)
    assert stored[:3] == [1, 1, 3]  # the first at once, the escalation with its count
    assert all(n - s <= COUNT_EVERY for n, s in enumerate(stored, 1))  # lags a few seconds
    assert len(set(stored)) <= 3 + 30 / COUNT_EVERY  # not one write per failure
    assert len(store.results(incident_id=1)) == 30  # every failure is still a row
    # A Guardian killed now continues from the rows; one closed in order writes the count.
    again = IncidentTracker(config, store, EventBus(), clock)
    assert again._open["t0000"].failures == 30
    await tracker.aclose()
    assert store.incident(1).failure_count == 30  # type: ignore[union-attr]
    await again.aclose()
    store.close()
