"""The ``comfyui`` check against the simulator: health, VRAM, hung-queue detection, bad input."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from guardian.checks.base import CheckContext
from guardian.checks.comfyui.canary import ComfyUICanaryCheck, ComfyUICanaryConfig
from guardian.checks.comfyui.health import ComfyUICheck, ComfyUICheckConfig, create
from guardian.checks.registry import build_check
from guardian.core.clock import FakeClock, SystemClock
from guardian.core.result import Status
from guardian.demo.comfyui.server import ComfyUISim
from guardian.demo.http import Reply, json_reply, text_reply

Make = Callable[..., ComfyUICheck]


@pytest.fixture
async def make(comfy: ComfyUISim) -> AsyncIterator[Make]:
    made: list[ComfyUICheck] = []

    def _make(url: str | None = None, clock: Any = None, **cfg: Any) -> ComfyUICheck:
        config = ComfyUICheckConfig(url=url or comfy.url, **cfg)
        check = create(config, CheckContext("comfyui", clock or SystemClock()))
        assert isinstance(check, ComfyUICheck)
        made.append(check)
        return check

    yield _make
    for check in made:
        await check.aclose()


def queue_running(comfy: ComfyUISim) -> list[str]:
    return [item[1] for item in comfy.queue()["queue_running"]]


async def test_healthy(make: Make) -> None:
    out = await make().run()
    assert out.status is Status.OK, out.reason
    assert out.reason == "ComfyUI 0.3.64: 0 running, 0 pending"
    v = out.values
    assert v["online"] is True and v["comfyui_version"] == "0.3.64"
    assert v["pytorch_version"] == "2.8.0+cu128" and v["python_version"].count(".") == 2  # type: ignore[union-attr]
    assert v["device_name.0"] == "cuda:0 NVIDIA GeForce RTX 4090 : cudaMallocAsync"
    assert v["device_type.0"] == "cuda" and v["vram_total_mb.0"] == 24576.0
    assert v["vram_free_mb.0"] == 23228.0 and v["torch_vram_total_mb.0"] == 384.0
    assert v["ram_total_mb"] == 65536.0 and v["devices"] == 1
    assert (v["queue_running"], v["queue_pending"]) == (0, 0)
    assert all(not isinstance(x, dict | list) for x in v.values())


async def test_vram_leak_degrades(comfy: ComfyUISim, make: Make) -> None:
    check = make(vram_free_min_mb=22000)
    comfy.set_fault("vram_leak", leak_mb=1000)
    first = await check.run()
    assert first.status is Status.OK and first.values["vram_free_mb.0"] == 22228.0
    second = await check.run()
    assert second.status is Status.DEGRADED
    assert second.reason == (
        "memory pressure while idle: VRAM on cuda:0 NVIDIA GeForce RTX 4090 : cudaMallocAsync: "
        "21228 MB free < 22000 MB"
    )
    assert second.condition == "memory_pressure"
    assert second.values["memory_critical"] is False


async def test_cpu_device_never_counts_as_low_vram() -> None:
    sim = ComfyUISim(device="cpu").start()
    check = ComfyUICheck(ComfyUICheckConfig(url=sim.url, vram_free_min_mb=10**9),
                         CheckContext("c", SystemClock()))
    try:
        out = await check.run()
        assert out.status is Status.OK and out.values["device_type.0"] == "cpu"
    finally:
        await check.aclose()
        sim.stop()


async def test_stuck_running_detected_after_the_limit(
    comfy: ComfyUISim, make: Make, submit: Callable[[int], str], until: Any
) -> None:
    clock = FakeClock()
    check = make(clock=clock, stuck_running_after=900)
    comfy.set_fault("stuck_running")
    prompt_id = submit(1)
    until(lambda: queue_running(comfy))
    assert (await check.run()).status is Status.OK
    await clock.advance(899)
    out = await check.run()
    assert out.status is Status.OK and out.values["running_for_s"] == 899
    await clock.advance(2)
    out = await check.run()
    assert out.status is Status.FAILED
    assert out.reason.startswith(
        f"queue stuck: prompt {prompt_id} running for 901 s with no progress over 120 s (CPU +"
    )
    assert out.condition == "stuck_running"
    assert out.values["queue_running"] == 1


async def test_pending_with_nothing_running_detected(
    comfy: ComfyUISim, make: Make, submit: Callable[[int], str]
) -> None:
    clock = FakeClock()
    check = make(clock=clock, stuck_pending_after=300)
    comfy.set_fault("pending_idle")
    submit(1)
    submit(2)
    assert (await check.run()).status is Status.OK
    await clock.advance(299)
    assert (await check.run()).status is Status.OK
    await clock.advance(1)
    out = await check.run()
    assert out.status is Status.FAILED
    assert out.reason == "queue stuck: 2 pending, nothing running for 300s"


async def test_no_false_positive_while_prompts_progress(
    comfy: ComfyUISim, make: Make, submit: Callable[[int], str], until: Any
) -> None:
    """A busy queue for longer than both limits is fine as long as prompts keep finishing."""
    clock = FakeClock()
    check = make(clock=clock, stuck_running_after=900, stuck_pending_after=300)
    comfy.exec_time = 0.3
    comfy.set_fault("stuck_running")
    first, second = submit(1), submit(2)
    until(lambda: queue_running(comfy) == [first])
    for expected in (first, second):
        until(lambda e=expected: queue_running(comfy) == [e])  # type: ignore[misc]
        for _ in range(2):
            out = await check.run()
            assert out.status is Status.OK, out.reason
            await clock.advance(600)
        comfy.set_fault("none")  # let the running prompt finish ...
        until(lambda e=expected: queue_running(comfy) != [e])  # type: ignore[misc]
        comfy.set_fault("stuck_running")  # ... and wedge the next one again
    until(lambda: comfy.history_entry(second))
    assert (await check.run()).status is Status.OK
    assert clock.monotonic() - 1000 >= 2400  # far past both limits in total


async def test_queue_tracking_resets_when_the_queue_drains(
    comfy: ComfyUISim, make: Make, submit: Callable[[int], str], until: Any
) -> None:
    clock = FakeClock()
    check = make(clock=clock, stuck_pending_after=300)
    comfy.set_fault("pending_idle")
    prompt_id = submit(1)
    await check.run()
    await clock.advance(200)
    await asyncio.to_thread(
        httpx.post, comfy.url + "/queue", json={"delete": [prompt_id]}, trust_env=False
    )
    assert (await check.run()).status is Status.OK  # empty: the idle timer stops
    submit(2)
    await check.run()
    await clock.advance(200)
    assert (await check.run()).status is Status.OK  # 200 s since it was seen, not 400


async def test_connection_refused_fails(make: Make) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = await make(url=f"http://127.0.0.1:{port}").run()
    assert out.status is Status.FAILED and out.values["online"] is False
    assert out.reason == f"cannot connect to http://127.0.0.1:{port}: connection refused"


async def test_hang_fails_within_the_timeout(comfy: ComfyUISim, make: Make) -> None:
    comfy.set_fault("hang")
    check = make(timeout=0.3, interval=5)
    out = await asyncio.wait_for(check.run(), 5)
    assert out.status is Status.FAILED
    assert out.reason.startswith(f"no answer from {comfy.url}/system_stats within 0.3s")
    comfy.set_fault("none")


async def test_error500_fails(comfy: ComfyUISim, make: Make) -> None:
    comfy.set_fault("error500")
    out = await make().run()
    assert out.status is Status.FAILED
    assert out.reason == (
        "GET /system_stats returned HTTP 500: 500 Internal Server Error "
        "Server got itself in trouble"
    )


STATS = {"system": {"comfyui_version": "0.3.64"},
         "devices": [{"name": "cpu", "type": "cpu", "vram_total": 1, "vram_free": 1}]}


@pytest.mark.parametrize(("path", "reply", "reason"), [
    ("/system_stats", text_reply("<html>"), "/system_stats: invalid JSON"),
    ("/system_stats", json_reply([1]), "/system_stats: expected a JSON object, got list"),
    ("/system_stats", json_reply({"devices": []}), "/system_stats: 'system' is missing"),
    ("/system_stats", json_reply({"system": {}, "devices": {}}),
     "/system_stats: 'devices' is missing or not a list"),
    ("/system_stats", json_reply({"system": {}, "devices": ["gpu"]}),
     "/system_stats: devices[0] is not an object"),
    ("/system_stats", json_reply({"system": {}, "devices": [{"name": "x", "type": "cuda"}]}),
     "/system_stats: devices[0] vram_total/vram_free are not numbers"),
    ("/system_stats", json_reply({"system": {}, "devices": [{"name": 1, "type": "cuda"}]}),
     "/system_stats: devices[0] has no string 'name' and 'type'"),
    ("/queue", json_reply({"queue_running": []}), "/queue: 'queue_pending' is missing"),
    ("/queue", json_reply({"queue_running": [{"id": "x"}], "queue_pending": []}),
     "/queue: queue_running items are not [number, prompt_id, ...] arrays"),
    ("/queue", json_reply("idle"), "/queue: expected a JSON object, got str"),
    ("/queue", Reply(404, b"404: Not Found", "text/plain"), "GET /queue returned HTTP 404"),
])
async def test_wrong_shapes_fail_with_a_reason(
    scripted: Any, make: Make, path: str, reply: Reply, reason: str
) -> None:
    scripted.replies[("GET", "/system_stats")] = json_reply(STATS)
    scripted.replies[("GET", "/queue")] = json_reply({"queue_running": [], "queue_pending": []})
    scripted.replies[("GET", path)] = reply
    out = await make(url=scripted.url).run()
    assert out.status is Status.FAILED
    assert out.reason.startswith(reason), out.reason


async def test_oversized_body_is_cut_off(scripted: Any, make: Make) -> None:
    huge = {**STATS, "padding": "x" * 10_000}
    scripted.replies[("GET", "/system_stats")] = json_reply(huge)
    out = await make(url=scripted.url, max_body_bytes=1000).run()
    assert out.status is Status.FAILED
    assert out.reason == "/system_stats: response body larger than 1000 bytes (stopped reading)"


async def test_minimal_valid_shapes_pass(scripted: Any, make: Make) -> None:
    """Older ComfyUI builds lack version fields: that's fine, not a failure."""
    scripted.replies[("GET", "/system_stats")] = json_reply(
        {"system": {}, "devices": [{"name": "cpu", "type": "cpu", "vram_total": 0,
                                    "vram_free": 0}]})
    scripted.replies[("GET", "/queue")] = json_reply({"queue_running": [], "queue_pending": []})
    out = await make(url=scripted.url).run()
    assert out.status is Status.OK and out.values["comfyui_version"] is None
    assert json.dumps(dict(out.values))  # every value is a flat JSON scalar


def test_create_dispatches_on_the_config_kind() -> None:
    ctx = CheckContext("comfyui", SystemClock())
    assert isinstance(build_check(ComfyUICheckConfig(), ctx), ComfyUICheck)
    canary = build_check(ComfyUICanaryConfig(), ctx)
    assert isinstance(canary, ComfyUICanaryCheck)
    assert canary.config.kind == "comfyui_canary"
