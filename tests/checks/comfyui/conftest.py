"""Fixtures for the ComfyUI check tests: real simulators on loopback, a scripted server."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import httpx
import pytest

from guardian.demo.comfyui.server import ComfyUISim
from guardian.demo.http import Reply, Request, SimApp, json_reply


class Scripted(SimApp):
    """A server that answers whatever a test scripted, for shapes no real ComfyUI sends."""

    name: ClassVar[str] = "scripted"

    def __init__(self) -> None:
        super().__init__()
        # An idle queue unless a test scripts another: the canary reads it first.
        self.replies: dict[tuple[str, str], Reply] = {
            ("GET", "/queue"): json_reply({"queue_running": [], "queue_pending": []}),
        }

    def route(self, request: Request) -> Reply | None:
        return self.replies.get((request.method, request.path))


@pytest.fixture
def comfy() -> Iterator[ComfyUISim]:
    sim = ComfyUISim(device="cuda", exec_time=0.02).start()
    try:
        yield sim
    finally:
        sim.stop()


@pytest.fixture
def scripted() -> Iterator[Scripted]:
    server = Scripted().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def submit(comfy: ComfyUISim) -> Callable[[int], str]:
    """Queue an EmptyImage -> PreviewImage prompt on the simulator; its prompt_id."""

    def _submit(color: int) -> str:
        prompt = {
            "1": {"class_type": "EmptyImage",
                  "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": color}},
            "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
        }
        r = httpx.post(comfy.url + "/prompt", json={"prompt": prompt}, trust_env=False)
        assert r.status_code == 200, r.text
        prompt_id: str = r.json()["prompt_id"]
        return prompt_id

    return _submit


def wait_until(predicate: Callable[[], Any], timeout: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.01)
    raise AssertionError("condition not met in time")


@pytest.fixture(scope="session")
def until() -> Callable[..., Any]:
    """``wait_until`` as a fixture (test modules cannot import conftest under importlib)."""
    return wait_until
