"""`guardian run` as a real process: SIGTERM -> exit 0 quickly with a final log line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(os.name == "nt", reason="POSIX signals")


def write_config(tmp_path: Path) -> Path:
    cfg = tmp_path / "g.toml"
    cfg.write_text(
        f"""
[guardian]
log_dir = {json.dumps(str(tmp_path / "logs"))}
state_dir = {json.dumps(str(tmp_path / "state"))}
report_dir = {json.dumps(str(tmp_path / "reports"))}
[api]
enabled = false
[[targets]]
name = "disk"
[[targets.checks]]
kind = "disk"
paths = [{json.dumps(str(tmp_path))}]
interval = 0.2
timeout = 0.1
warn_gb = 0
critical_gb = 0
"""
    )
    return cfg


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_guardian_with_exit_0_and_final_log_line(tmp_path: Path, sig: int) -> None:
    cfg = write_config(tmp_path)
    proc = subprocess.Popen(
        [sys.executable, "-m", "guardian", "run", "--config", str(cfg), "--log-format", "json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    log_file = tmp_path / "logs" / "guardian.log"
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if log_file.exists() and '"event":"check"' in log_file.read_text():
            break
        time.sleep(0.05)
    else:
        proc.kill()
        pytest.fail(f"guardian did not start: {proc.communicate()[1]}")
    t0 = time.monotonic()
    proc.send_signal(sig)
    rc = proc.wait(timeout=5)
    elapsed = time.monotonic() - t0
    assert rc == 0, proc.stderr.read() if proc.stderr else ""
    assert elapsed < 2.0
    entries = [json.loads(line) for line in log_file.read_text().splitlines()]
    assert entries[-1]["msg"] == "guardian stopped"
    assert any(e.get("event") == "check" and e.get("target") == "disk" for e in entries)
