"""Escape sequences from a target are inert in every terminal sink (issue 21, attack 9).

A real HTTP target answers with an OSC title-setting sequence, a clear-screen and a
carriage return in its health status and in its ComfyUI version: ``guardian check``,
``guardian status``, ``guardian incidents``, the pretty console log of a real ``guardian
run`` and the Markdown report's log section show them as ``\\x1b...`` and never emit them.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from guardian.cli.main import app
from guardian.config.load import load_config
from guardian.incidents.report import Reporter
from guardian.incidents.store import Store
from guardian.runtime import Guardian
from testkit.chaos import guardian_env, toml

EVIL = "a\x1b]0;owned\x07b\x1b[2J\x1b[1;1H\rc\x9b31m"


class Hostile(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/health":
            body: Any = {"status": EVIL}
        elif self.path == "/api/status":  # standing in for a Guardian's API
            body = {"status": "degraded", "targets": [
                {"name": f"panel{EVIL}", "status": "failed", "reason": f"status {EVIL}",
                 "recovery": None, "checks": []}], "incidents_open": []}
        else:
            self.send_error(404)
            return
        raw = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def target() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Hostile)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield int(server.server_address[1])
    server.shutdown()
    server.server_close()


def config(tmp: Path, port: int, api_port: int | None = None) -> Path:
    """``api_port`` None: the API at the target's own port (the CLI then reads the hostile
    target as if it were Guardian); a Guardian that runs needs another (0: any free one)."""
    path = tmp / "guardian.toml"
    path.write_text(f"""
[guardian]
log_dir = {toml(tmp / "logs")}
state_dir = {toml(tmp / "state")}
report_dir = {toml(tmp / "reports")}
[api]
port = {port if api_port is None else api_port}
[[targets]]
name = "panel"
[[targets.checks]]
kind = "http"
url = "http://127.0.0.1:{port}/health"
interval = 0.5
timeout = 0.4
""")
    return path


def inert(text: str) -> None:
    assert "\x1b" not in text and "\x9b" not in text and "\x07" not in text, repr(text)


def test_check_status_and_incidents_show_escapes_inert(target: int, tmp_path: Path) -> None:
    cfg = config(tmp_path, target)
    env = {**guardian_env(), "COLUMNS": "400"}
    check = subprocess.run([sys.executable, "-m", "guardian", "check", "--config", str(cfg)],
                           env=env, capture_output=True, text=True, timeout=60)
    inert(check.stdout + check.stderr)
    assert "owned" in check.stdout, check.stdout  # shown, escaped
    status = CliRunner().invoke(app, ["status", "--config", str(cfg)], env={"COLUMNS": "400"})
    inert(status.output)
    assert "\\x1b[2J" in status.output
    results = asyncio.run(Guardian(load_config(cfg)).check_once())
    store = Store.from_config(load_config(cfg))
    # The store keeps what the target said, raw (the check's reason carries its C1 bytes).
    assert "\x9b" in results[0].reason
    store.open_incident("panel", results[0].finished, "major", f"status {EVIL}")
    store.close()
    listed = CliRunner().invoke(app, ["incidents", "--config", str(cfg)],
                                env={"COLUMNS": "400"})
    inert(listed.output)
    assert "\\x1b" in listed.output


def test_pretty_console_log_shows_escapes_inert(target: int, tmp_path: Path) -> None:
    cfg = config(tmp_path, target, api_port=0)
    proc = subprocess.Popen([sys.executable, "-m", "guardian", "run", "--config", str(cfg),
                             "--log-format", "pretty"], env=guardian_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    log = tmp_path / "logs" / "guardian.log"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and "owned" not in (log.read_text() if log.exists()
                                                          else ""):
        time.sleep(0.1)
    proc.terminate()
    _, err = proc.communicate(timeout=30)
    assert "owned" in err, err
    inert(err)


def test_report_log_section_shows_escapes_inert(tmp_path: Path) -> None:
    cfg = load_config(config(tmp_path, 9))
    store = Store.from_config(cfg)

    async def tail(_: str, n: int) -> list[str]:
        return [f"line {EVIL}"]

    try:
        results = asyncio.run(Guardian(cfg).check_once())
        inc = store.open_incident("panel", results[0].finished, "major", "down")
        reporter = Reporter(cfg, store, log_tail=tail, snapshot=lambda: {})

        async def write() -> str:
            await reporter.capture(inc.id)
            return await reporter.render(inc.id)

        md = asyncio.run(write())
    finally:
        store.close()
    inert(md)
    assert "line a\\x1b]0;owned\\x07b" in md
