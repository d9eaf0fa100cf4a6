"""start_incidents: the one call the runtime makes, with a service backend's log tail."""

from __future__ import annotations

import asyncio
from pathlib import Path

from guardian.core.clock import FakeClock
from guardian.core.events import EventBus
from guardian.core.result import Status
from guardian.core.state import State
from guardian.incidents import start_incidents
from guardian.services.memory import MemoryBackend
from testkit.incidents import Webhook, make_config, result


async def test_start_incidents_wires_store_tracker_reports_and_notifications(
    tmp_path: Path, webhook: Webhook
) -> None:
    comfyui = MemoryBackend("comfyui", log=[
        "boot", "OSError: [WinError 10048] Only one usage of each socket address"])
    config = make_config(tmp_path, notify={"urls": [webhook.url()]})
    clock = FakeClock()
    bus = EventBus()
    state = State(config, bus)
    incidents = start_incidents(
        config, bus, clock, state, {"comfyui": comfyui}
    )
    for _ in range(3):
        state.record(result(clock, Status.FAILED))
        await clock.advance(10)
    await incidents.tracker.idle()
    await incidents.notifier.idle()
    (inc,) = incidents.store.incidents()
    assert inc.status == "escalated" and inc.report_path
    md = await asyncio.to_thread(Path(inc.report_path).read_text)
    assert "WinError 10048" in md and "**Port already in use**" in md
    assert [t.rsplit(" ", 1)[1] for t in webhook.titles()] == ["opened", "escalated"]
    await incidents.aclose()
    assert config.store_path.is_file()
