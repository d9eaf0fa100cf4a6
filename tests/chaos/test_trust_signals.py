"""Signals a user or a stray ``kill`` may send (issue 21, attack 5), to a real ``guardian run``.

SIGHUP reopens the log file (logrotate's convention: the old file was moved away) and
supervision goes on; SIGUSR1/SIGUSR2 are logged and ignored; a signal whose default is to
end the process (SIGALRM here) ends Guardian cleanly: a log line that says why, its child
stopped, its runtime file removed.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from testkit.chaos import (
    GuardianProc,
    cleanup,
    features,
    free_port,
    guardian_config,
    http_ok,
    log_events,
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


def test_hup_reopens_usr_ignored_alrm_ends_cleanly(tmp_path: Path) -> None:
    port, pidfile = free_port(), tmp_path / "victim.pid"
    config = guardian_config(tmp_path, port, pidfile)
    log = tmp_path / "logs" / "guardian.log"
    runtime = tmp_path / "state" / "guardian.runtime.json"
    guardian: GuardianProc | None = None
    with cleanup(str(pidfile), lambda: guardian):
        guardian = GuardianProc(config, tmp_path / "g.err")
        assert wait_for(lambda: http_ok(port) and runtime.exists(), 30), guardian.stderr()
        child = read_pid(pidfile)

        rotated = log.with_name("guardian.log.rotated")
        log.rename(rotated)  # what logrotate does before it sends SIGHUP
        guardian.proc.send_signal(signal.SIGHUP)
        assert wait_for(lambda: any(e.get("event") == "log_reopened" for e in log_events(log)),
                        20), guardian.stderr()
        for sig in (signal.SIGUSR1, signal.SIGUSR2):
            guardian.proc.send_signal(sig)
        assert wait_for(lambda: sum(e.get("signal") in ("SIGUSR1", "SIGUSR2")
                                    for e in log_events(log)) == 2, 20)
        assert guardian.proc.poll() is None
        # Still supervising after all three: a killed child is restarted.
        os.kill(child or 0, signal.SIGKILL)
        assert wait_for(lambda: read_pid(pidfile) not in (None, child) and http_ok(port), 30)
        assert not any(e.get("event") == "log_reopened" for e in log_events(rotated))

        guardian.proc.send_signal(signal.SIGALRM)
        assert guardian.proc.wait(timeout=30) == 0
        events = log_events(log)
        assert any(e.get("msg") == "stopping on SIGALRM" for e in events)
        assert events[-1]["msg"] == "guardian stopped"
        assert not runtime.exists()
        assert not http_ok(port)  # on_guardian_stop = "stop": its child stopped with it
