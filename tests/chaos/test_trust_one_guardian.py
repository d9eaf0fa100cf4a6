"""One Guardian per store (issue 21, attack 4): a second ``run`` or ``demo`` touches nothing.

Real ``guardian run`` processes supervise a real HTTP server. A second Guardian on the
same config must exit non-zero at once, name the running one's pid, and leave the first
one's child, runtime file, log and store exactly as they were; the first one keeps
supervising. The lock is the kernel's: SIGKILL the first and a new one starts.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from testkit.chaos import (
    GuardianProc,
    cleanup,
    features,
    free_port,
    guardian_config,
    guardian_env,
    http_ok,
    log_events,
    read_pid,
    wait_for,
)

pytestmark = [
    pytest.mark.skipif(os.name == "nt", reason="POSIX processes and signals"),
    pytest.mark.timeout(120),
]


@pytest.fixture(autouse=True)
def _supported() -> None:
    why = features()
    if why:
        pytest.skip(why)


def digest(*paths: Path) -> dict[str, str]:
    """Content, mode and mtime of each file: 'changed' means any of them."""
    out = {}
    for p in paths:
        st = p.stat()
        content = hashlib.sha256(p.read_bytes()).hexdigest()
        out[str(p)] = f"{content}:{st.st_mode:o}:{st.st_mtime_ns}"
    return out


def run_second(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "guardian", *args], env=guardian_env(),
                          capture_output=True, text=True, timeout=60, cwd=cwd)


def test_second_run_on_one_store_exits_at_once_and_touches_nothing(tmp_path: Path) -> None:
    port, pidfile = free_port(), tmp_path / "victim.pid"
    config = guardian_config(tmp_path, port, pidfile)
    first: GuardianProc | None = None
    with cleanup(str(tmp_path), lambda: first):
        first = GuardianProc(config, tmp_path / "first.err")
        assert wait_for(lambda: http_ok(port), 30), first.stderr()
        child = read_pid(pidfile)
        runtime = tmp_path / "state" / "guardian.runtime.json"
        assert wait_for(runtime.exists, 10)
        log = tmp_path / "logs" / "guardian.log"
        store = tmp_path / "state" / "guardian.db"
        wait_for(lambda: store.exists(), 10)
        # Quiet the first one's own writes while we compare: its log and store still move
        # by themselves (check lines), so compare the files the second one could clobber.
        before = digest(runtime, config)
        log_lines_before = len(log_events(log))

        second = run_second("run", "--config", str(config), "--log-format", "json")

        assert second.returncode == 5  # could not start (the README's exit-code table)
        assert f"pid {first.pid}" in second.stderr, second.stderr
        assert "already runs on this store" in second.stderr
        assert digest(runtime, config) == before
        assert read_pid(pidfile) == child and http_ok(port)  # nothing adopted, nothing killed
        events = log_events(log)
        assert len(events) >= log_lines_before
        assert not [e for e in events if e.get("pid") not in (None, child)
                    and e.get("event") in ("process_adopted", "process_started")]
        assert not [e for e in events if e.get("event") in ("stopping", "process_stopped")]
        # The first one still supervises: a killed child comes back.
        os.kill(child or 0, 9)
        assert wait_for(lambda: read_pid(pidfile) not in (None, child) and http_ok(port), 30)
        first.sigkill()
        # The kernel released the lock with the holder: the next Guardian starts.
        again = GuardianProc(config, tmp_path / "again.err")
        try:
            assert wait_for(lambda: any(e.get("event") == "started"
                                        for e in log_events(log)[len(events):]), 30)
            assert again.proc.poll() is None
        finally:
            assert again.stop() == 0


def test_second_demo_in_one_directory_keeps_the_running_config(tmp_path: Path) -> None:
    demo_dir = tmp_path / "demo"
    first = subprocess.Popen(
        [sys.executable, "-m", "guardian", "demo", "--dir", str(demo_dir), "--api-port", "0",
         "--log-format", "json"],
        env=guardian_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        runtime = demo_dir / "state" / "guardian.runtime.json"
        assert wait_for(runtime.exists, 60)
        config = demo_dir / "guardian-demo.toml"
        before = digest(config, runtime)
        second = run_second("demo", "--dir", str(demo_dir), "--api-port", "0")
        assert second.returncode == 5  # could not start (the README's exit-code table)
        assert f"pid {first.pid}" in second.stderr, second.stderr
        assert digest(config, runtime) == before
        assert first.poll() is None
    finally:
        first.terminate()
        first.wait(timeout=30)
