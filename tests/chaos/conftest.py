"""Shared fixtures for the fault-injection suite: hostile servers, leak baselines."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))  # chaos_support, importable from the tests


@pytest.fixture
def hostile_ports() -> Iterator[dict[str, int]]:
    """Start chaos_servers.py in its own process; yield {endpoint: port}; kill it."""
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "chaos_servers.py")],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # the script prints its ports before serving
        assert line, "chaos_servers.py did not start"
        yield json.loads(line)
    finally:
        proc.kill()
        proc.wait(timeout=10)
