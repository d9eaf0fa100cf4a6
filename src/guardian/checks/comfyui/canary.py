"""The ``comfyui_canary`` check: proves ComfyUI's executor works end to end.

It submits a model-free EmptyImage -> PreviewImage prompt through the shared
:class:`~guardian.checks.comfyui.client.ComfyUIClient` and judges its history entry. Shapes
follow real ComfyUI 0.3.64 captures.
"""

from __future__ import annotations

import contextlib
import random
import uuid
from typing import Any, Literal

from pydantic import Field

from guardian.checks.base import Check, CheckConfigBase, CheckContext, TargetUrl
from guardian.checks.comfyui.client import ComfyUIClient, ComfyUIError, clip, number, optional_str
from guardian.checks.comfyui.health import DEFAULT_COMFYUI_URL, RunningTracker, busy_reason
from guardian.core.result import Outcome, Value

MIB = 1024 * 1024
CANARY_MAX_BODY_BYTES = 4 * MIB
CANARY_FIRST_POLL = 0.05  # the canary takes milliseconds: poll fast first, then back off


class ComfyUICanaryConfig(CheckConfigBase):
    """Submit a model-free EmptyImage -> PreviewImage prompt and wait for it to finish."""

    kind: Literal["comfyui_canary"] = "comfyui_canary"
    url: TargetUrl = DEFAULT_COMFYUI_URL
    interval: float = Field(600.0, gt=0, le=86_400)
    timeout: float = Field(60.0, gt=0, le=3600)
    poll_interval: float = Field(0.5, gt=0, le=60)
    # A canary that times out on a slow-but-working box must not get working ComfyUI
    # killed: by default its failures are evidence (incident, report), not a restart cause.
    liveness: bool = Field(
        False, description="failures count towards restarting (off: evidence only)"
    )
    width: int = Field(64, ge=8, le=4096)
    height: int = Field(64, ge=8, le=4096)


def canary_prompt(width: int, height: int, color: int) -> dict[str, Any]:
    """The model-free graph: runs in milliseconds on any machine, even CPU-only."""
    return {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": width, "height": height, "batch_size": 1, "color": color},
        },
        "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
    }


class ComfyUICanaryCheck:
    """Submit the canary, poll ``/history/{id}`` until it has a status, judge it.

    The colour is random every time: ComfyUI serves an identical resubmit from its cache and
    runs no node, which would prove nothing. The engine bounds the whole run by cancelling
    it; a canary left behind by a cancelled run is removed from the queue on the next run.
    """

    def __init__(
        self, cfg: ComfyUICanaryConfig, ctx: CheckContext, rng: random.Random | None = None
    ) -> None:
        self.config: CheckConfigBase = cfg
        self.cfg = cfg
        self.ctx = ctx
        self.api = ComfyUIClient(cfg.url, cfg.timeout, CANARY_MAX_BODY_BYTES)
        self.client_id = str(uuid.uuid4())
        self._rng = rng or random.Random()
        self._last_color: int | None = None
        self._unfinished: str | None = None
        self.tracker = RunningTracker()

    async def run(self) -> Outcome:
        try:
            return await self._run()
        except ComfyUIError as exc:
            return Outcome.failed(str(exc)).tagged(reason_class=exc.reason_class)

    def _next_color(self) -> int:
        color = self._rng.randrange(0, 0x1000000)
        while color == self._last_color:
            color = self._rng.randrange(0, 0x1000000)
        self._last_color = color
        return color

    async def _run(self) -> Outcome:
        await self._drop_unfinished()
        busy = await self._busy(None)
        if busy is not None:
            return busy
        clock = self.ctx.clock
        started = clock.monotonic()
        prompt_id = await self._submit()
        self._unfinished = prompt_id
        delay = CANARY_FIRST_POLL
        while True:
            await clock.sleep(min(delay, self.cfg.poll_interval))
            delay *= 2
            entry = await self._history(prompt_id)
            if entry is None:
                busy = await self._busy(prompt_id)
                if busy is not None:  # a job came in first: ours waits behind it
                    await self._drop_unfinished()
                    return busy
                continue
            self._unfinished = None
            return judge_canary(entry, prompt_id, clock.monotonic() - started)

    async def _busy(self, own: str | None) -> Outcome | None:
        """SKIPPED when the queue holds a job that is not this canary: the canary would only
        wait behind it, and its timeout would say nothing about ComfyUI's health."""
        running, pending = await self.api.queue()
        running_for = self.tracker.see(running, self.ctx.clock.monotonic())
        foreign = [item for item in running if item[1] != own]
        if foreign:
            prompt_id = foreign[0][1]
            return Outcome.skipped(
                busy_reason(prompt_id, running_for), busy=True, running_prompt_id=prompt_id,
                running_for_s=round(running_for, 1),
            )
        if own is None and pending:
            return Outcome.skipped(
                f"busy: {len(pending)} prompts pending", busy=True, running_prompt_id=None,
                running_for_s=0.0,
            )
        return None

    async def _submit(self) -> str:
        body = {
            "prompt": canary_prompt(self.cfg.width, self.cfg.height, self._next_color()),
            "client_id": self.client_id,
            "extra_data": {"note": "guardian-canary"},
        }
        return await self.api.submit(body, "canary")

    async def _history(self, prompt_id: str) -> dict[str, Any] | None:
        """The finished history entry, or None while the prompt is queued or running."""
        return await self.api.history_entry(prompt_id)

    async def _drop_unfinished(self) -> None:
        """Best effort: take a canary abandoned by a cancelled run off the queue."""
        if self._unfinished is None:
            return
        prompt_id, self._unfinished = self._unfinished, None
        with contextlib.suppress(ComfyUIError):
            await self.api.delete([prompt_id])

    async def aclose(self) -> None:
        await self.api.aclose()


def judge_canary(entry: dict[str, Any], prompt_id: str, latency: float) -> Outcome:
    """The outcome of a finished canary from its history entry."""
    status = entry["status"]
    status_str = status.get("status_str")
    messages = status.get("messages")
    events: dict[str, dict[str, Any]] = {}
    if isinstance(messages, list):
        for message in messages:
            if (isinstance(message, list) and len(message) == 2 and isinstance(message[0], str)
                    and isinstance(message[1], dict)):
                events[message[0]] = message[1]
    latency_ms = round(latency * 1000, 1)
    values: dict[str, Value] = {"latency_ms": latency_ms, "prompt_id": prompt_id}
    if status_str == "success":
        start = number(events.get("execution_start", {}).get("timestamp"))
        end = number(events.get("execution_success", {}).get("timestamp"))
        if start is not None and end is not None:
            values["exec_ms"] = end - start
        return Outcome.ok(f"canary finished in {latency_ms:.0f} ms", **values)
    if status_str != "error":
        return Outcome.failed(
            f"canary ended with unexpected status {status_str!r}", **values
        ).tagged(reason_class="invalid_response")
    if "execution_error" in events:
        err = events["execution_error"]
        exc_type = str(err.get("exception_type") or "error")
        values["exception_type"] = exc_type
        values["node_type"] = optional_str(err.get("node_type"))
        values["exception_message"] = clip(str(err.get("exception_message") or ""), 2000)
        where = f"node {err.get('node_id')} ({err.get('node_type')})"
        message = clip(str(err.get("exception_message") or ""))
        return Outcome.failed(
            f"canary failed at {where}: {exc_type}: {message}", **values
        ).tagged(reason_class="other")  # the workflow failed: ComfyUI answered fine
    if "execution_interrupted" in events:
        err = events["execution_interrupted"]
        return Outcome.failed(
            f"canary interrupted at node {err.get('node_id')} ({err.get('node_type')})", **values
        ).tagged(reason_class="other")
    return Outcome.failed("canary ended with status error", **values).tagged(reason_class="other")


def create(cfg: ComfyUICanaryConfig, ctx: CheckContext) -> Check:
    """The runtime ``comfyui_canary`` check."""
    return ComfyUICanaryCheck(cfg, ctx)
