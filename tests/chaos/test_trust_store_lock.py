"""Another process holding the store's write lock never delays a restart (issue 21, 7).

A real ``guardian run`` supervises a real server; a second process takes SQLite's write
lock on Guardian's store and keeps it. A killed child must still come back at once:
busy waits are bounded, the writes are kept in memory for later.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from testkit.chaos import (
    GuardianProc,
    cleanup,
    features,
    free_port,
    guardian_config,
    http_ok,
    read_pid,
    wait_for,
)

pytestmark = [
    pytest.mark.skipif(os.name == "nt", reason="POSIX signals"),
    pytest.mark.timeout(120),
]

HOLDER = """
import sqlite3, sys, time
c = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
c.execute("BEGIN IMMEDIATE")
print("held", flush=True)
time.sleep(120)
"""


@pytest.fixture(autouse=True)
def _supported() -> None:
    why = features()
    if why:
        pytest.skip(why)


def test_held_store_lock_never_delays_a_crash_restart(tmp_path: Path) -> None:
    port, pidfile = free_port(), tmp_path / "victim.pid"
    config = guardian_config(tmp_path, port, pidfile)
    guardian: GuardianProc | None = None
    holder: subprocess.Popen[str] | None = None
    with cleanup(str(pidfile), lambda: guardian):
        try:
            guardian = GuardianProc(config, tmp_path / "g.err")
            assert wait_for(lambda: http_ok(port), 30), guardian.stderr()
            holder = subprocess.Popen([sys.executable, "-c", HOLDER,
                                       str(tmp_path / "state" / "guardian.db")],
                                      stdout=subprocess.PIPE, text=True)
            assert holder.stdout is not None and holder.stdout.readline() == "held\n"
            child = read_pid(pidfile)
            t0 = time.monotonic()
            os.kill(child or 0, signal.SIGKILL)
            # Before: ~30 s (three 10 s busy waits on the event loop before the restart).
            assert wait_for(lambda: read_pid(pidfile) not in (None, child) and http_ok(port),
                            8), guardian.stderr()[-2000:]
            print(f"restarted {time.monotonic() - t0:.2f} s after the kill, lock held")
            assert guardian.proc.poll() is None
        finally:
            if holder is not None:
                holder.kill()
                holder.wait()
