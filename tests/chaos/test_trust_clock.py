"""A wall clock stepped back between two runs never holds a crashed service down
(issue 21, attack 8): times restored from the store that lie in the future are clamped.

A real store file holds a breaker record written "an hour from now" (what the times look
like after the clock is stepped back an hour); a real ``guardian run`` restarts its
killed child after its 1 s cooldown, not after the hour.
"""

from __future__ import annotations

import os
import signal
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from guardian.recovery.breakers import BreakerRecord, SqliteBreakerStore
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


@pytest.fixture(autouse=True)
def _supported() -> None:
    why = features()
    if why:
        pytest.skip(why)


def test_future_times_from_the_store_are_clamped(tmp_path: Path) -> None:
    store = SqliteBreakerStore(tmp_path / "guardian.db")
    ahead = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    past = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    store.save("victim", BreakerRecord(2, [past, ahead], ahead, False))
    store.close()
    again = SqliteBreakerStore(tmp_path / "guardian.db")
    try:
        rec = again.load()["victim"]
    finally:
        again.close()
    now = datetime.now(UTC)
    assert rec.attempt_times[0] == past  # a past time is kept as it was
    assert rec.last_restart is not None
    assert datetime.fromisoformat(rec.last_restart) <= now
    assert all(datetime.fromisoformat(t) <= now for t in rec.attempt_times)


def test_crash_after_a_clock_step_back_is_restarted_within_its_cooldown(tmp_path: Path) -> None:
    port, pidfile = free_port(), tmp_path / "victim.pid"
    config = guardian_config(tmp_path, port, pidfile, recovery=(
        "cooldown = 1\nmax_attempts = 1000\nwindow = 3600\nbackoff_factor = 1.0\n"
        "backoff_max = 1\nfailure_threshold = 3\nstable_period = 0\nmin_uptime = 0\n"))
    (tmp_path / "state").mkdir(mode=0o700)
    store = SqliteBreakerStore(tmp_path / "state" / "guardian.db")
    ahead = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    store.save("victim", BreakerRecord(1, [ahead], ahead, False))
    store.close()
    guardian: GuardianProc | None = None
    with cleanup(str(pidfile), lambda: guardian):
        guardian = GuardianProc(config, tmp_path / "g.err")
        assert wait_for(lambda: http_ok(port), 30), guardian.stderr()
        child = read_pid(pidfile)
        os.kill(child or 0, signal.SIGKILL)
        # Before: held down for the hour the clock was stepped back.
        assert wait_for(lambda: read_pid(pidfile) not in (None, child) and http_ok(port), 30), (
            guardian.stderr()[-2000:])
