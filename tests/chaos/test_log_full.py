"""Guardian keeps checking and recovering when its log cannot be written.

Two real ways a log breaks: the log dir cannot exist (its parent is a regular file), and
the disk is "full" (``RLIMIT_FSIZE`` in Guardian's process with SIGXFSZ ignored, so a
write past the limit fails with EFBIG, as on a full disk). In both, Guardian says
"cannot write log file" exactly once on stderr, keeps logging checks to the console, and
still restarts its SIGKILLed child. (Until the process backend is on this branch, the
test runs the child itself and checks the logging half only.)
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from testkit.chaos import (
    GuardianProc,
    cleanup,
    features,
    free_port,
    guardian_config,
    http_check_missing,
    http_ok,
    kill_all,
    read_pid,
    victim_argv,
    victims,
    wait_for,
)

pytestmark = [
    pytest.mark.skipif(os.name == "nt", reason="POSIX rlimits and signals"),
    pytest.mark.timeout(90),
]
FSIZE_LIMIT = 8 * 1024


def _limit_file_size() -> None:
    import resource

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of death, as a full disk
    resource.setrlimit(resource.RLIMIT_FSIZE, (FSIZE_LIMIT, FSIZE_LIMIT))


def _keeps_working(g: GuardianProc, port: int, pidfile: Path, supervised: bool) -> None:
    """The child serves, a SIGKILL of it is repaired, checks keep reaching the console."""
    assert wait_for(lambda: http_ok(port), 20), g.stderr()[-3000:]
    if supervised:
        old = read_pid(pidfile)
        assert old is not None
        os.kill(old, signal.SIGKILL)
        new = wait_for(lambda: (p := read_pid(pidfile)) != old and p, 15)
        assert new, f"child not restarted; stderr:\n{g.stderr()[-3000:]}"
        assert wait_for(lambda: http_ok(port), 10)
    n = g.stderr().count('"event":"check"')
    assert wait_for(lambda: g.stderr().count('"event":"check"') > n, 10), "console went quiet"
    assert g.proc.poll() is None, "guardian died"


@pytest.mark.parametrize("how", ["dir_below_file", "file_size_limit"])
def test_unwritable_log_is_reported_once_and_guardian_keeps_working(
    tmp_path: Path, how: str
) -> None:
    why = http_check_missing()
    if why:
        pytest.skip(why)
    supervised = features() is None
    port, pidfile = free_port(), tmp_path / "victim.pid"
    popen = {}
    if how == "dir_below_file":
        (tmp_path / "not-a-dir").write_text("a regular file\n")
        log_dir = tmp_path / "not-a-dir" / "logs"
    else:
        log_dir = tmp_path / "logs"
        popen["preexec_fn"] = _limit_file_size
    # debug: every check result is logged, so the size limit is hit within a second or two
    cfg = guardian_config(tmp_path, port, pidfile, log_dir=log_dir, log_level="debug",
                          interval=0.2, supervised=supervised)
    g: GuardianProc | None = None
    with cleanup(str(pidfile), lambda: g):
        if not supervised:
            subprocess.Popen(victim_argv(port, pidfile), start_new_session=True)
        g = GuardianProc(cfg, tmp_path / "guardian.err", **popen)
        _keeps_working(g, port, pidfile, supervised)
        if how == "file_size_limit":
            log = log_dir / "guardian.log"
            assert wait_for(lambda: "cannot write log file" in g.stderr(), 15), g.stderr()[-2000:]
            assert log.stat().st_size <= FSIZE_LIMIT
            _keeps_working(g, port, pidfile, supervised)  # and still, after the log broke mid-run
        assert g.stderr().count("cannot write log file") == 1, g.stderr()[-3000:]
        assert len(victims(str(pidfile))) == 1
        kill_all([] if supervised else victims(str(pidfile)))
        assert g.stop() == 0
    assert victims(str(pidfile)) == []
