"""Guardian's own I/O on a hung mount never blocks supervision (issue 21, attack 7).

A real FUSE mount that never answers (hung_mount.py): ten disk-check paths on it must not
take the worker that measures ``/``; a ``log_dir`` on it must not stop a real ``guardian
run`` from restarting a killed child, nor from exiting on SIGTERM.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from guardian.checks.base import CheckContext
from guardian.checks.disk import DiskCheckConfig
from guardian.checks.disk import create as create_disk
from guardian.core.clock import SystemClock
from guardian.core.result import Status
from testkit.chaos import GuardianProc, free_port, guardian_config, http_ok, read_pid, wait_for
from testkit.hung_mount import hung_mount, unavailable

pytestmark = [
    pytest.mark.skipif(unavailable() is not None, reason=str(unavailable())),
    pytest.mark.timeout(120),
]


@pytest.fixture
def dead(tmp_path: Path) -> Iterator[Path]:
    with hung_mount(tmp_path / "dead") as path:
        yield path


async def test_ten_hung_paths_never_fail_the_healthy_disk_check(dead: Path,
                                                                tmp_path: Path) -> None:
    hung = create_disk(DiskCheckConfig(paths=[str(dead / f"p{i}") for i in range(10)],
                                       warn_gb=0, critical_gb=0, timeout=0.3),
                       CheckContext("models", SystemClock()))
    healthy = create_disk(DiskCheckConfig(paths=[str(tmp_path)], warn_gb=0, critical_gb=0,
                                          timeout=2), CheckContext("box", SystemClock()))
    for _ in range(5):
        bad, good = await asyncio.gather(hung.run(), healthy.run())
        assert bad.status is Status.FAILED
        assert good.status is Status.OK, good.reason


def test_log_dir_on_a_hung_mount_never_stops_supervision_or_exit(dead: Path,
                                                                tmp_path: Path) -> None:
    port, pidfile = free_port(), tmp_path / "victim.pid"
    config = guardian_config(tmp_path, port, pidfile, log_dir=dead / "logs")
    g = GuardianProc(config, tmp_path / "g.err")
    try:
        assert wait_for(lambda: http_ok(port), 40), g.stderr()[-3000:]
        assert "did not answer" in g.stderr()
        child = read_pid(pidfile)
        os.kill(child or 0, signal.SIGKILL)
        assert wait_for(lambda: read_pid(pidfile) not in (None, child) and http_ok(port), 30), (
            g.stderr()[-3000:])
        g.proc.send_signal(signal.SIGTERM)
        t0 = time.monotonic()
        try:
            code = g.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pytest.fail("guardian did not exit after SIGTERM with its log dir hung")
        print(f"exit after SIGTERM with a hung log dir: {time.monotonic() - t0:.2f} s")
        assert code == 0
        assert "guardian stopped" in g.stderr()  # the console kept logging
    finally:
        g.stop(timeout=5)
