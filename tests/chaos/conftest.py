"""Shared fixtures for the fault-injection suite: hostile servers, leak baselines."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import pytest

from testkit.procs import HOSTILE


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
