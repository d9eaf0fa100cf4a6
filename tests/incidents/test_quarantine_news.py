"""A prompt the queue journal quarantined reaches people: a timeline entry, the incident's
headline, and a notification of its own (each prompt once) saying how to release it, its
target-supplied text inert. Through real apprise to a real local webhook."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

from guardian.core.clock import FakeClock
from guardian.core.events import EventBus, IncidentEvent, IncidentTransition, RecoveryKind
from guardian.incidents.notify import Notifier
from guardian.incidents.store import Store
from guardian.incidents.timeline import incident_dicts
from guardian.incidents.tracker import IncidentTracker
from testkit.incidents import Webhook, make_config, recovery


def quarantined(clock: FakeClock, prompt_id: str, saved: str = "") -> object:
    event = recovery(clock, RecoveryKind.PROMPT_QUARANTINED,
                     reason=f"prompt {prompt_id} was running at 2 crashes: quarantined, "
                     "not re-run")
    return replace(event, detail=f"saved to {saved}" if saved else "",
                   values={"prompt_id": prompt_id, "saved_to": saved})


async def test_a_quarantined_prompt_is_in_the_timeline_and_notified(
        tmp_path: Path, webhook: Webhook) -> None:
    config = make_config(tmp_path, notify={"urls": [webhook.url()], "group_window": 0})
    clock, bus = FakeClock(), EventBus()
    store = Store.from_config(config, now=clock.now)
    notifier = Notifier(config, store, clock)
    news: list[IncidentEvent] = []
    bus.subscribe(lambda e: news.append(e) if isinstance(e, IncidentEvent) else None)
    tracker = IncidentTracker(config, store, bus, clock, notifier=notifier)
    bus.publish(recovery(clock, RecoveryKind.EXITED, reason="exit code -9"))
    poison = "6f1c2a9e-poison"
    saved = str(tmp_path / "reports" / f"quarantine-comfyui-{poison}.json")
    bus.publish(quarantined(clock, poison, saved))  # type: ignore[arg-type]
    hostile = "x](http://evil.example)\n@everyone <b>[y"
    bus.publish(quarantined(clock, hostile))  # type: ignore[arg-type]
    await notifier.idle()

    incident = tracker.open_incident_for("comfyui")
    assert incident is not None
    assert incident.summary.startswith(f"prompt {hostile} was running at 2 crashes")
    timeline = incident_dicts(store, [incident])[0]["timeline"]
    kinds = [entry["kind"] for entry in timeline]
    assert kinds.count("prompt_quarantined") == 2
    assert [e.transition for e in news] == [IncidentTransition.OPENED,
                                            IncidentTransition.QUARANTINED,
                                            IncidentTransition.QUARANTINED]
    titles = webhook.titles()
    assert titles == [f"[Guardian] comfyui: incident #{incident.id} opened",
                      f"[Guardian] comfyui: incident #{incident.id} quarantined",
                      f"[Guardian] comfyui: incident #{incident.id} quarantined"]
    first, second = (str(b["message"]) for b in webhook.bodies[1:])
    assert (f"Summary: prompt {poison} was running at 2 crashes: quarantined, not re-run. "
            f"Run it again: guardian queue release {poison} --target comfyui; forget it: "
            f"guardian queue drop {poison} --target comfyui. Saved: {saved}") in first
    # The hostile id arrives as text: on one line, no link, no markup, no mention of its own.
    summary = next(line for line in second.splitlines() if line.startswith("Summary: "))
    assert "@everyone" not in summary and "@\u200beveryone" in summary
    assert "<b>" not in summary and "\\<b\\>" in summary
    assert re.search(r"(?<!\\)[\[\]]", summary) is None  # every bracket escaped: no link
    assert [n.transition for n in store.notifications(incident.id)] == [
        "opened", "quarantined", "quarantined"]
    await tracker.aclose()
    await notifier.aclose()


async def test_the_quarantine_event_can_be_left_out(tmp_path: Path, webhook: Webhook) -> None:
    config = make_config(tmp_path, notify={"urls": [webhook.url()], "group_window": 0,
                                           "events": ["open", "escalate", "resolve"]})
    clock, bus = FakeClock(), EventBus()
    store = Store.from_config(config, now=clock.now)
    notifier = Notifier(config, store, clock)
    tracker = IncidentTracker(config, store, bus, clock, notifier=notifier)
    bus.publish(quarantined(clock, "p-1"))  # type: ignore[arg-type]  # no incident open: opens
    await notifier.idle()
    incident = tracker.open_incident_for("comfyui")
    assert incident is not None and incident.summary.startswith("prompt p-1 was running")
    assert webhook.titles() == [f"[Guardian] comfyui: incident #{incident.id} opened"]
    await tracker.aclose()
    await notifier.aclose()
