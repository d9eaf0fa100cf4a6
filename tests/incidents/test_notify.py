"""Notifications through real apprise to a real local webhook: dedupe, rate limit, retries."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

from guardian.core.clock import FakeClock
from guardian.core.events import IncidentEvent, IncidentTransition
from guardian.incidents.notify import Notifier, apprise_send
from guardian.incidents.store import Store
from testkit.incidents import Webhook, make_config


def event(
    clock: FakeClock,
    incident_id: int,
    transition: IncidentTransition = IncidentTransition.OPENED,
    target: str = "comfyui",
    summary: str = "http: connection refused",
) -> IncidentEvent:
    return IncidentEvent(incident_id, target, transition, clock.now(), "major", summary)


def setup(tmp_path: Path, urls: list[str], **notify: object) -> tuple[Notifier, Store, FakeClock]:
    """A notifier on a store holding incidents #1..#9 (notification rows reference them).

    One message per transition unless a test asks for grouping (test_notify_groups.py)."""
    clock = FakeClock()
    config = make_config(tmp_path, notify={"urls": urls, "group_window": 0, **notify})
    store = Store.from_config(config, now=clock.now)
    for i in range(9):
        store.open_incident("panel" if i == 3 else "comfyui", clock.now(), "major", f"#{i + 1}")
    return Notifier(config, store, clock), store, clock


async def test_delivers_a_redacted_message_and_records_the_attempt(
    tmp_path: Path, webhook: Webhook
) -> None:
    notifier, store, clock = setup(tmp_path, [webhook.url("alerts")])
    inc = store.incident(1)
    assert inc is not None
    ev = event(clock, inc.id, summary="login failed for postgres://app:hunter2@db/x")
    assert notifier.submit(ev) is not None
    await notifier.idle()
    assert webhook.paths == ["/alerts"]
    (body,) = webhook.bodies
    assert body["title"] == f"[Guardian] comfyui: incident #{inc.id} opened"
    assert "Severity: major" in body["message"]
    assert "hunter2" not in body["message"] and "[REDACTED]" in body["message"]
    (attempt,) = store.notifications(inc.id)
    assert attempt.ok and attempt.channel == "#1 json://[REDACTED]"
    assert attempt.transition == "opened" and attempt.error == ""
    assert str(webhook.port) not in attempt.channel


async def test_one_message_per_transition_per_incident_also_across_restarts(
    tmp_path: Path, webhook: Webhook
) -> None:
    notifier, store, clock = setup(tmp_path, [webhook.url()])
    for _ in range(3):
        notifier.submit(event(clock, 1))
    notifier.submit(event(clock, 1, IncidentTransition.ESCALATED))
    notifier.submit(event(clock, 2))
    await notifier.idle()
    assert len(webhook.bodies) == 3
    # a new Notifier (Guardian restarted) on the same store does not resend
    again = Notifier(notifier.config, store, clock)
    assert again.submit(event(clock, 1, IncidentTransition.ESCALATED)) is None
    await again.idle()
    assert len(webhook.bodies) == 3


async def test_rate_limit_per_target_per_hour(tmp_path: Path, webhook: Webhook) -> None:
    notifier, store, clock = setup(tmp_path, [webhook.url()], rate_limit_per_hour=2)
    assert notifier.submit(event(clock, 1)) is not None
    assert notifier.submit(event(clock, 2)) is not None
    assert notifier.submit(event(clock, 3)) is None  # third for comfyui this hour
    assert notifier.submit(event(clock, 4, target="panel")) is not None  # other target
    await notifier.idle()
    assert len(webhook.bodies) == 3
    limited = [a for a in store.notifications() if not a.ok]
    assert [(a.incident_id, a.error) for a in limited] == [(3, "rate limited (2 per hour)")]

    await clock.advance(3599)
    assert notifier.submit(event(clock, 5)) is None
    await clock.advance(1)  # the first message is an hour old now
    assert notifier.submit(event(clock, 6)) is not None
    await notifier.idle()
    assert len(webhook.bodies) == 4


async def test_filtered_transitions_and_no_urls_send_nothing(
    tmp_path: Path, webhook: Webhook
) -> None:
    notifier, _, clock = setup(tmp_path, [webhook.url()], events=["escalate"])
    assert notifier.submit(event(clock, 1)) is None
    assert notifier.submit(event(clock, 1, IncidentTransition.RESOLVED)) is None
    assert notifier.submit(event(clock, 1, IncidentTransition.ESCALATED)) is not None
    await notifier.idle()
    assert len(webhook.bodies) == 1
    empty, _, _ = setup(tmp_path / "b", [])
    assert empty.submit(event(clock, 9)) is None


async def test_retries_with_backoff_on_the_clock_then_succeeds(
    tmp_path: Path, webhook: Webhook
) -> None:
    webhook.status = 500
    notifier, store, clock = setup(tmp_path, [webhook.url()], retries=3)
    task = notifier.submit(event(clock, 1))
    assert task is not None
    for _ in range(200):  # first attempt runs in a thread against the real server
        if clock.pending:
            break
        await asyncio.sleep(0.01)
    assert len(webhook.bodies) == 1 and clock.pending == 1  # backing off 2 s
    await clock.advance(1.9)
    assert len(webhook.bodies) == 1
    await clock.advance(0.1)
    for _ in range(200):
        if clock.pending:
            break
        await asyncio.sleep(0.01)
    assert len(webhook.bodies) == 2  # second attempt; now waits 4 s
    webhook.status = 200
    await clock.advance(4)
    await asyncio.wait_for(task, timeout=10)
    assert len(webhook.bodies) == 3
    attempts = store.notifications(1)
    assert [a.ok for a in attempts] == [False, False, True]
    assert "500" in attempts[0].error or "error" in attempts[0].error.lower()


async def test_a_hanging_channel_times_out_without_blocking_the_loop(tmp_path: Path) -> None:
    release = threading.Event()

    def hang(url: str, title: str, body: str) -> tuple[bool, str]:
        release.wait(10)
        return True, ""

    clock = FakeClock()
    config = make_config(
        tmp_path, notify={"urls": ["json://127.0.0.1:1/x"], "timeout": 0.2, "retries": 0}
    )
    store = Store.from_config(config)
    store.open_incident("comfyui", clock.now(), "major", "x")
    notifier = Notifier(config, store, clock, sender=hang)
    t0 = time.monotonic()
    task = notifier.submit(event(clock, 1))
    assert time.monotonic() - t0 < 0.05  # submit never waits for delivery
    ticks = 0
    while not task.done():  # type: ignore[union-attr]
        ticks += 1
        await asyncio.sleep(0.01)
    release.set()
    assert ticks >= 5  # the loop kept running while the sender hung
    (attempt,) = store.notifications(1)
    assert not attempt.ok and attempt.error == "timed out after 0.2 s"


async def test_send_test_reports_each_url(tmp_path: Path, webhook: Webhook) -> None:
    notifier, store, _ = setup(
        tmp_path, [webhook.url(), "json://127.0.0.1:1/closed", "notascheme://x"]
    )
    results = await notifier.send_test()
    assert [(label, ok) for label, ok, _ in results] == [
        ("#1 json://[REDACTED]", True),
        ("#2 json://[REDACTED]", False),
        ("#3 notascheme://[REDACTED]", False),
    ]
    assert "connection" in results[1][2].lower()
    assert results[2][2] == "not a valid apprise URL"
    assert webhook.titles() == ["[Guardian] test notification"]
    assert [a.transition for a in store.notifications()] == ["test"] * 3


def test_apprise_send_reports_the_reason_of_a_failure(webhook: Webhook) -> None:
    webhook.status = 503
    ok, error = apprise_send(webhook.url(), "t", "b")
    assert not ok and "503" in error
    webhook.status = 200
    assert apprise_send(webhook.url(), "t", "b") == (True, "")


async def test_messages_of_one_target_go_out_in_order(tmp_path: Path) -> None:
    """opened must not overtake escalated even when its delivery is slow."""
    first_started = threading.Event()
    release = threading.Event()
    sent: list[str] = []

    def slow_first(url: str, title: str, body: str) -> tuple[bool, str]:
        if not sent and "opened" in title:
            first_started.set()
            release.wait(10)
        sent.append(title.rsplit(" ", 1)[1])
        return True, ""

    clock = FakeClock()
    config = make_config(tmp_path, notify={"urls": ["json://127.0.0.1:1/x"]})
    store = Store.from_config(config)
    store.open_incident("comfyui", clock.now(), "major", "x")
    notifier = Notifier(config, store, clock, sender=slow_first)
    notifier.submit(event(clock, 1))
    notifier.submit(event(clock, 1, IncidentTransition.ESCALATED))
    notifier.submit(event(clock, 1, IncidentTransition.RESOLVED))
    assert await asyncio.to_thread(first_started.wait, 10)
    await asyncio.sleep(0.1)
    assert sent == []  # escalated waits behind the slow opened
    release.set()
    await asyncio.wait_for(notifier.idle(), timeout=10)
    assert sent == ["opened", "escalated", "resolved"]
