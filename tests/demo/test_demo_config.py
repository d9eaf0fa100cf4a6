"""`guardian demo` comes up with its supervised simulators, and `guardian check` passes on it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from guardian.demo.stack import free_port

pytestmark = pytest.mark.skipif(os.name == "nt", reason="POSIX signals")


@pytest.mark.slow
def test_demo_comes_up_and_check_exits_0(tmp_path: Path) -> None:
    demo_dir = tmp_path / "demo"
    api_port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "guardian", "demo", "--dir", str(demo_dir),
         "--api-port", str(api_port), "--log-format", "json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    config = demo_dir / "guardian-demo.toml"
    try:
        deadline = time.monotonic() + 40
        result = None
        while time.monotonic() < deadline:
            time.sleep(0.5)
            assert proc.poll() is None, proc.communicate()[1]
            if not config.exists():
                continue
            result = subprocess.run(
                [sys.executable, "-m", "guardian", "check", "--config", str(config), "--json"],
                capture_output=True, text=True, timeout=60,
            )
            # While the demo runs, `check` shows its view: wait until every check has run.
            kinds_seen = {r["kind"] for r in json.loads(result.stdout or "{}").get("results", [])}
            if result.returncode == 0 and {"comfyui", "http", "gpu"} <= kinds_seen:
                break
        assert result is not None and result.returncode == 0, (result.stdout, result.stderr)  # type: ignore[union-attr]
        report = json.loads(result.stdout)
        kinds = {r["kind"]: r["status"] for r in report["results"]}
        assert kinds["comfyui"] == "ok" and kinds["http"] == "ok"
        assert kinds["gpu"] in ("ok", "skipped")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = proc.wait()
    assert rc == 0
    # The supervised simulators went down with Guardian: their ports are free again.
    log = (demo_dir / "logs" / "guardian.log").read_text()
    assert '"msg":"guardian stopped"' in log
