"""Shared fixtures for the fault-injection suite: hostile servers, leak baselines."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from testkit.procs import HOSTILE

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test in this folder is a chaos test (``make test-fast`` leaves them out)."""
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(pytest.mark.chaos)


@pytest.fixture
def hostile_ports() -> Iterator[dict[str, int]]:
    """Start testkit/hostile.py in its own process; yield {endpoint: port}; kill it."""
    proc = subprocess.Popen(
        [sys.executable, str(HOSTILE)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # the script prints its ports before serving
        assert line, "testkit/hostile.py did not start"
        yield json.loads(line)
    finally:
        proc.kill()
        proc.wait(timeout=10)
