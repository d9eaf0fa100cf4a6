"""The ``comfyui_canary`` check: a real prompt through the simulator, and every way it fails."""

from __future__ import annotations

import asyncio
import json
import random
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from guardian.checks.base import CheckContext
from guardian.checks.comfyui.canary import ComfyUICanaryCheck, ComfyUICanaryConfig, canary_prompt
from guardian.core.clock import SystemClock
from guardian.core.result import Status
from guardian.demo.comfyui.server import ComfyUISim
from guardian.demo.http import json_reply, text_reply

Make = Callable[..., ComfyUICanaryCheck]
CAPTURES = Path(__file__).resolve().parents[2] / "fixtures" / "comfyui" / "captures"


@pytest.fixture
async def make(comfy: ComfyUISim) -> AsyncIterator[Make]:
    made: list[ComfyUICanaryCheck] = []

    def _make(url: str | None = None, **cfg: Any) -> ComfyUICanaryCheck:
        config = ComfyUICanaryConfig(url=url or comfy.url, poll_interval=0.05, **cfg)
        check = ComfyUICanaryCheck(config, CheckContext("comfyui", SystemClock()),
                                   rng=random.Random(7))
        made.append(check)
        return check

    yield _make
    for check in made:
        await check.aclose()


async def test_canary_succeeds_and_measures_latency(comfy: ComfyUISim, make: Make) -> None:
    check = make(width=32, height=16)
    outcomes = [await check.run(), await check.run()]
    for out in outcomes:
        assert out.status is Status.OK, out.reason
        latency = out.values["latency_ms"]
        assert isinstance(latency, float) and 0 < latency < 2000
        assert out.reason == f"canary finished in {latency:.0f} ms"
        assert isinstance(out.values["exec_ms"], float) and out.values["exec_ms"] >= 0
    entries = [comfy.history_entry(str(o.values["prompt_id"])) for o in outcomes]
    prompts = [next(iter(e.values()))["prompt"] for e in entries]
    colors = [p[2]["1"]["inputs"]["color"] for p in prompts]
    assert colors[0] != colors[1]  # an identical resubmit would be served from cache
    for entry in entries:
        messages = next(iter(entry.values()))["status"]["messages"]
        assert [messages[1][0], messages[1][1]["nodes"]] == ["execution_cached", []]
    assert prompts[0][2]["1"]["inputs"] | {"color": 0} == {
        "width": 32, "height": 16, "batch_size": 1, "color": 0}
    assert prompts[0][3] == {"note": "guardian-canary", "client_id": check.client_id}


async def test_canary_fail_reports_the_exception(comfy: ComfyUISim, make: Make) -> None:
    comfy.set_fault("canary_fail")
    out = await make().run()
    assert out.status is Status.FAILED
    assert out.reason == (
        "canary failed at node 2 (PreviewImage): RuntimeError: "
        "simulated node failure (comfyui_sim fault canary_fail)"
    )
    assert out.values["exception_type"] == "RuntimeError"


async def test_oom_reason_names_cuda_out_of_memory(comfy: ComfyUISim, make: Make) -> None:
    comfy.set_fault("oom")
    out = await make().run()
    assert out.status is Status.FAILED
    assert "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate" in out.reason
    assert len(out.reason) < 500
    assert "TIPS: If the workflow worked before" in str(out.values["exception_message"])


async def test_interrupted_canary_fails(comfy: ComfyUISim, make: Make, until: Any) -> None:
    comfy.set_fault("stuck_running")
    task = asyncio.create_task(make().run())
    await asyncio.to_thread(until, lambda: comfy.queue()["queue_running"])
    async with httpx.AsyncClient(trust_env=False) as client:
        assert (await client.post(comfy.url + "/interrupt")).status_code == 200
    comfy.set_fault("none")
    out = await asyncio.wait_for(task, 5)
    assert out.status is Status.FAILED
    assert out.reason == "canary interrupted at node 2 (PreviewImage)"


async def test_engine_timeout_then_abandoned_canary_is_dequeued(
    comfy: ComfyUISim, make: Make
) -> None:
    """pending_idle: the canary never finishes; the engine's cancellation ends the run."""
    comfy.set_fault("pending_idle")
    check = make()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(check.run(), 0.3)
    first = [item[1] for item in comfy.queue()["queue_pending"]]
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(check.run(), 0.3)
    second = [item[1] for item in comfy.queue()["queue_pending"]]
    assert len(first) == len(second) == 1 and first != second


async def test_rejected_prompt_fails_with_the_error_type(scripted: Any, make: Make) -> None:
    scripted.replies[("POST", "/prompt")] = json_reply({
        "error": {"type": "invalid_prompt",
                  "message": "Cannot execute because node EmptyImage does not exist.",
                  "details": "Node ID '#1'", "extra_info": {}},
        "node_errors": {},
    }, 400)
    out = await make(url=scripted.url).run()
    assert out.status is Status.FAILED
    assert out.reason == (
        "canary rejected by ComfyUI: invalid_prompt: "
        "Cannot execute because node EmptyImage does not exist."
    )


async def test_rejected_with_node_errors(scripted: Any, make: Make) -> None:
    scripted.replies[("POST", "/prompt")] = json_reply({
        "error": {"type": "prompt_outputs_failed_validation",
                  "message": "Prompt outputs failed validation", "details": "",
                  "extra_info": {}},
        "node_errors": {"1": {"errors": [{"type": "value_bigger_than_max",
                                          "message": "Value 99999 bigger than max of 16384",
                                          "details": "width", "extra_info": {}}],
                              "dependent_outputs": ["2"], "class_type": "EmptyImage"}},
    }, 400)
    out = await make(url=scripted.url).run()
    assert out.reason.endswith(
        "prompt_outputs_failed_validation: Prompt outputs failed validation "
        "(node 1: Value 99999 bigger than max of 16384: width)"
    )


async def test_rejected_for_a_missing_model_names_the_node_and_file(scripted: Any,
                                                                    make: Make) -> None:
    """The real 400 of a ComfyUI without the checkpoint a workflow names (capture
    ``prompt_missing_model.json``): the reason says which node and which file."""
    cap = json.loads((CAPTURES / "prompt_missing_model.json").read_text(encoding="utf-8"))
    scripted.replies[("POST", "/prompt")] = json_reply(cap["body"], cap["status"])
    out = await make(url=scripted.url).run()
    assert out.status is Status.FAILED
    assert out.reason == (
        "canary rejected by ComfyUI: prompt_outputs_failed_validation: Prompt outputs failed "
        "validation (node 4: Value not in list: ckpt_name: "
        "'v1-5-pruned-emaonly-fp16.safetensors' not in [])"
    )


@pytest.mark.parametrize(("replies", "reason"), [
    ({("POST", "/prompt"): text_reply("500 Internal Server Error\n\nServer got itself", 500)},
     "POST /prompt returned HTTP 500: 500 Internal Server Error Server got itself"),
    ({("POST", "/prompt"): text_reply("<html>", 400)},
     "canary rejected by ComfyUI: HTTP 400: <html>"),
    ({("POST", "/prompt"): json_reply({"number": 0})},
     "/prompt: answer has no string 'prompt_id'"),
    ({("POST", "/prompt"): text_reply("ok")}, "/prompt: invalid JSON"),
    ({("POST", "/prompt"): json_reply({"prompt_id": "p1"}),
      ("GET", "/history/p1"): json_reply([])},
     "/history/p1: expected a JSON object, got list"),
    ({("POST", "/prompt"): json_reply({"prompt_id": "p1"}),
      ("GET", "/history/p1"): json_reply({"other": {}})},
     "/history/p1: answer has no entry for prompt p1"),
    ({("POST", "/prompt"): json_reply({"prompt_id": "p1"}),
      ("GET", "/history/p1"): json_reply({"p1": {"status": {"status_str": "weird"}}})},
     "canary ended with unexpected status 'weird'"),
    ({("POST", "/prompt"): json_reply({"prompt_id": "p1"}),
      ("GET", "/history/p1"): json_reply({"p1": {"status": {"status_str": "error",
                                                            "messages": "nope"}}})},
     "canary ended with status error"),
])
async def test_bad_answers_fail_with_a_reason(
    scripted: Any, make: Make, replies: dict[Any, Any], reason: str
) -> None:
    scripted.replies.update(replies)
    out = await asyncio.wait_for(make(url=scripted.url).run(), 5)
    assert out.status is Status.FAILED
    assert out.reason.startswith(reason), out.reason


async def test_connection_refused_fails(make: Make) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = await make(url=f"http://127.0.0.1:{port}").run()
    assert out.status is Status.FAILED
    assert out.reason == f"cannot connect to http://127.0.0.1:{port}: connection refused"


async def test_hung_server_fails_within_the_timeout(comfy: ComfyUISim, make: Make) -> None:
    comfy.set_fault("hang")
    out = await asyncio.wait_for(make(timeout=0.3).run(), 5)
    assert out.status is Status.FAILED and out.reason.startswith("no answer from")
    comfy.set_fault("none")


def test_canary_prompt_shape() -> None:
    prompt = canary_prompt(64, 48, 123)
    assert prompt["1"] == {"class_type": "EmptyImage",
                           "inputs": {"width": 64, "height": 48, "batch_size": 1, "color": 123}}
    assert prompt["2"] == {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}
