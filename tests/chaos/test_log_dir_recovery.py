"""``guardian run`` gets its log file back after the log dir is removed or unwritable
(issue 11.13): one line on stderr when the file is lost, one when it is back, no traceback
flood, and the checks keep running and logging to the console throughout."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from testkit.chaos import GuardianProc, toml, wait_for

pytestmark = [pytest.mark.skipif(os.name == "nt", reason="POSIX paths"), pytest.mark.timeout(120)]


def _config(tmp: Path, log_dir: Path) -> Path:
    path = tmp / "guardian.toml"
    path.write_text(f"""
[guardian]
log_dir = {toml(log_dir)}
state_dir = {toml(tmp / "state")}
report_dir = {toml(tmp / "reports")}
log_level = "debug"
jitter = 0
shutdown_grace = 2
[api]
enabled = false
[[targets]]
name = "box"
[[targets.checks]]
kind = "memory"
warn_available_mb = 0
critical_available_mb = 0
interval = 0.1
timeout = 0.08
""")
    return path


def checks_in(path: Path) -> int:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return 0
    return text.count('"event":"check"')


def test_log_dir_removed_then_blocked_then_restored(tmp_path: Path) -> None:
    log_dir = tmp_path / "logs"
    log_file = log_dir / "guardian.log"
    g = GuardianProc(_config(tmp_path, log_dir), tmp_path / "guardian.err")
    try:
        assert wait_for(lambda: checks_in(log_file) > 5, 20), g.stderr()[-2000:]
        # 1. the dir is removed under Guardian: the file comes back by itself
        shutil.rmtree(log_dir)
        assert wait_for(lambda: checks_in(log_file) > 3, 30), g.stderr()[-2000:]
        assert "was removed or replaced; reopening" in g.stderr()
        # 2. the dir cannot exist (a regular file in its place): one outage line
        shutil.rmtree(log_dir)
        log_dir.write_text("not a dir\n")
        assert wait_for(lambda: "cannot write log file" in g.stderr(), 30), g.stderr()[-2000:]
        n = g.stderr().count('"event":"check"')
        assert wait_for(lambda: g.stderr().count('"event":"check"') > n + 20, 20)  # console on
        # 3. fixed: the file is written again and the recovery is said once
        log_dir.unlink()
        assert wait_for(lambda: "writable again after" in g.stderr(), 60), g.stderr()[-2000:]
        assert wait_for(lambda: checks_in(log_file) > 3, 10)
        first = json.loads(log_file.read_text().splitlines()[0])
        assert first["event"] == "log_file_recovered" and first["lost"] > 0
        err = g.stderr()
        assert err.count("cannot write log file") == 1
        assert err.count("writable again after") == 1
        assert "Traceback" not in err
        assert g.stop() == 0
    finally:
        g.stop(timeout=5)
