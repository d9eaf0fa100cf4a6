"""Fixtures for the simulator tests: the real ComfyUI captures and running simulators."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from guardian.demo.comfyui.server import ComfyUISim

REPO = Path(__file__).resolve().parents[2]
# Real ComfyUI 0.3.64 captures, vendored from ../shared/comfyui (the reference copy) so a bare
# clone runs every test; see tests/fixtures/comfyui/README.md.
CAPTURES = REPO / "tests" / "fixtures" / "comfyui" / "captures"
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
TEMP_NAME = re.compile(r"ComfyUI_temp_[a-z]{5}_")


@pytest.fixture(scope="session")
def captures() -> Callable[[str], Any]:
    """Load a capture by file name."""

    def load(name: str) -> Any:
        return json.loads((CAPTURES / name).read_text(encoding="utf-8"))

    return load


def normalize(obj: Any) -> Any:
    """Blank out what differs between any two runs: ids, timestamps, temp file prefixes."""
    if isinstance(obj, dict):
        return {
            UUID.sub("<id>", k): 0 if k == "timestamp" else normalize(v) for k, v in obj.items()
        }
    if isinstance(obj, list):
        return [normalize(v) for v in obj]
    if isinstance(obj, str):
        return TEMP_NAME.sub("ComfyUI_temp_<x>_", UUID.sub("<id>", obj))
    return obj


def same_shape(actual: Any, expected: Any, where: str = "$") -> None:
    """Same keys in the same order and the same JSON types, recursively."""
    if isinstance(expected, dict):
        assert isinstance(actual, dict), f"{where}: expected object, got {actual!r}"
        assert list(actual) == list(expected), f"{where}: keys {list(actual)} != {list(expected)}"
        for key in expected:
            same_shape(actual[key], expected[key], f"{where}.{key}")
    elif isinstance(expected, list):
        assert isinstance(actual, list), f"{where}: expected array, got {actual!r}"
        if expected and actual:
            for i, item in enumerate(actual):
                same_shape(item, expected[min(i, len(expected) - 1)], f"{where}[{i}]")
    elif isinstance(expected, bool) or expected is None:
        assert type(actual) is type(expected), f"{where}: {actual!r} vs {expected!r}"
    elif isinstance(expected, int | float):
        assert isinstance(actual, int | float) and not isinstance(actual, bool), where
    else:
        assert type(actual) is type(expected), f"{where}: {actual!r} vs {expected!r}"


def wait_for(predicate: Callable[[], Any], timeout: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.01)
    raise AssertionError("condition not met in time")


@pytest.fixture
def comfy() -> Iterator[ComfyUISim]:
    sim = ComfyUISim(device="cpu", exec_time=0.02).start()
    try:
        yield sim
    finally:
        sim.stop()


@pytest.fixture
def client(comfy: ComfyUISim) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=comfy.url, timeout=5, trust_env=False) as c:
        yield c


@pytest.fixture(scope="session")
def h() -> SimpleNamespace:
    """The helpers above (test modules cannot import conftest under importlib mode)."""
    return SimpleNamespace(normalize=normalize, same_shape=same_shape, wait_for=wait_for)
