"""A fatal end says why and leaves nothing behind (issue 21, attack 5).

A real ``guardian run`` whose start fails after its child is up and its runtime file is
written (a fault injected in the process: the lag monitor's start raises): it must log
the error as ``fatal``, stop its child, remove its runtime file and exit non-zero.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from testkit.chaos import (
    features,
    free_port,
    guardian_config,
    guardian_env,
    kill_all,
    log_events,
    victims,
)

pytestmark = [
    pytest.mark.skipif(os.name == "nt", reason="POSIX processes"),
    pytest.mark.timeout(120),
]

RUN = """
import sys
from guardian.engine import overload
def boom(self):
    raise RuntimeError("injected fault after start-up")
overload.LoopLagMonitor.start = boom
from guardian.cli.launch import main
sys.argv = ["guardian", "run", "--config", sys.argv[1], "--log-format", "json"]
main()
"""


def cleanup_victims(marker: str) -> None:
    kill_all(victims(marker))


@pytest.fixture(autouse=True)
def _supported() -> None:
    why = features()
    if why:
        pytest.skip(why)


def test_fatal_error_is_logged_and_cleans_up(tmp_path: Path) -> None:
    port, pidfile = free_port(), tmp_path / "victim.pid"
    config = guardian_config(tmp_path, port, pidfile)
    try:
        proc = subprocess.run([sys.executable, "-c", RUN, str(config)], env=guardian_env(),
                              capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        cleanup_victims(str(pidfile))
        pytest.fail("guardian did not end after its fatal error")
    assert proc.returncode == 1, proc.stderr[-2000:]
    events = log_events(tmp_path / "logs" / "guardian.log")
    fatal = [e for e in events if e.get("event") == "fatal"]
    assert fatal and "injected fault after start-up" in fatal[0]["msg"]
    started = [e for e in events if e.get("event") == "start_outcome"]
    assert started and started[0]["outcome"] == "started"  # the child was up
    assert not (tmp_path / "state" / "guardian.runtime.json").exists()
    child = int(started[0]["pid"])
    try:
        os.kill(child, 0)
        alive = True
    except ProcessLookupError:
        alive = False
    if alive:
        os.kill(child, 9)  # never leave it behind, even when the test fails
    assert not alive, "the child was left running unsupervised"
