"""Text from targets is data in every sink (issue 11.11, 11.12).

A real HTTP target answers with rich markup in its health status and with Markdown/HTML
in its ComfyUI version string; ``guardian check``, ``guardian status`` and
``guardian incidents`` print it literally (no MarkupError, no exit 1 for a crash), and
the incident report renders it inert: no heading, no HTML, no ``javascript:`` link.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import threading
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
from guardian.support.escape import html_text, markdown_inline, terminal
from testkit.chaos import guardian_env, toml

MARKUP = "[/] [bold red]pwned[/bold red] [link=https://evil.example]x[/link]"
INJECTION = "# x\n<script>alert(1)</script> [a](javascript:alert(1)) ![i](javascript:x) `|"


class Hostile(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/health":
            body: Any = {"status": MARKUP}
        elif self.path == "/system_stats":
            body = {
                "system": {"comfyui_version": INJECTION, "python_version": "3.12",
                           "ram_total": 2**34, "ram_free": 2**33},
                "devices": [{"name": "cuda:0 <b>GPU</b>", "type": "cuda",
                             "vram_total": 2**34, "vram_free": 2**33}],
            }
        elif self.path == "/queue":
            body = {"queue_running": [], "queue_pending": []}
        elif self.path == "/api/status":  # standing in for a running Guardian's API
            body = {"status": "degraded", "targets": [
                {"name": f"panel{MARKUP}", "status": "failed", "reason": f"status {MARKUP}",
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


def _config(tmp: Path, port: int) -> Path:
    path = tmp / "guardian.toml"
    path.write_text(f"""
[guardian]
log_dir = {toml(tmp / "logs")}
state_dir = {toml(tmp / "state")}
report_dir = {toml(tmp / "reports")}
[api]
port = {port}
[[targets]]
name = "panel"
[[targets.checks]]
kind = "http"
url = "http://127.0.0.1:{port}/health"
[[targets]]
name = "comfyui"
critical = false
[[targets.checks]]
kind = "comfyui"
url = "http://127.0.0.1:{port}"
""")
    return path


def test_guardian_check_prints_target_markup_literally(target: int, tmp_path: Path) -> None:
    cfg = _config(tmp_path, target)
    proc = subprocess.run(
        [sys.executable, "-m", "guardian", "check", "--config", str(cfg)],
        env={**guardian_env(), "COLUMNS": "400"}, capture_output=True, text=True, timeout=60,
    )
    assert "MarkupError" not in proc.stderr, proc.stderr
    assert proc.returncode == 2, proc.stdout + proc.stderr  # panel (critical) failed
    assert "[/] [bold red]pwned[/bold red]" in proc.stdout
    assert "\x1b]8;" not in proc.stdout  # no clickable link from the target


def test_guardian_status_prints_target_markup_literally(target: int, tmp_path: Path) -> None:
    res = CliRunner().invoke(
        app, ["status", "--config", str(_config(tmp_path, target))], env={"COLUMNS": "400"}
    )
    assert res.exception is None or isinstance(res.exception, SystemExit), res.exception
    assert res.exit_code == 1, res.output  # "degraded", not a crash
    assert "[bold red]pwned" in res.output


def _incident_from_real_checks(tmp_path: Path, port: int) -> tuple[Path, Store, int]:
    cfg_path = _config(tmp_path, port)
    cfg = load_config(cfg_path)
    results = asyncio.run(Guardian(cfg).check_once())
    by_check = {r.check: r for r in results}
    assert INJECTION.split("\n")[0] in json.dumps(by_check["comfyui"].to_dict())
    store = Store.from_config(cfg)
    inc = store.open_incident("panel", results[0].finished, "major", by_check["http"].reason)
    for r in results:
        store.add_result(r, inc.id)
    return cfg_path, store, inc.id


def test_guardian_incidents_prints_target_markup_literally(target: int, tmp_path: Path) -> None:
    cfg_path, store, _ = _incident_from_real_checks(tmp_path, target)
    store.close()
    res = CliRunner().invoke(app, ["incidents", "--config", str(cfg_path)], env={"COLUMNS": "400"})
    assert res.exit_code == 0, (res.output, res.exception)
    assert "[bold red]pwned" in res.output


def test_report_renders_target_text_inert(target: int, tmp_path: Path) -> None:
    cfg_path, store, iid = _incident_from_real_checks(tmp_path, target)
    try:
        reporter = Reporter(load_config(cfg_path), store, snapshot=lambda: {
            "ComfyUI": [f"comfyui_version: {INJECTION}"], "GPU <img src=x>": ["- [x](y)"]})
        md = asyncio.run(reporter.render(iid))
    finally:
        store.close()
    headings = [line for line in md.splitlines() if line.startswith("#")]
    assert all(re.match(r"#{1,3} [A-Z]|#{1,3} \w", h) for h in headings), headings
    assert not any(h.startswith("# x") for h in headings)
    assert re.search(r"(?<!\\)<", md) is None  # no raw HTML: every "<" is escaped
    assert re.search(r"(?<!\\)\]\(javascript:", md) is None  # no link, no image
    assert re.search(r"(?<!\\)\[", md.replace("[REDACTED]", "")) is None
    assert "\\<script\\>alert(1)\\</script\\>" in md  # shown, escaped, not dropped
    assert "\\[a\\](javascript:alert(1))" in md
    for row in (line for line in md.splitlines() if line.startswith("| ")):
        assert len(re.findall(r"(?<!\\)\|", row)) in (4, 6), row  # no cell split by a "|"


@pytest.mark.parametrize("text", [MARKUP, INJECTION, "a\x1b]0;title\x07b\x1b[2J", "a\\b \\[x]"])
def test_escapes_per_sink(text: str) -> None:
    from rich.console import Console

    console = Console(record=True, width=400, color_system=None)
    console.print(terminal(text))  # raises MarkupError if anything were left as markup
    shown = console.export_text()
    assert "\x1b" not in shown
    # Control characters are shown, as \xNN, never sent to the terminal.
    assert shown.replace("\n", "") == text.replace("\x1b]0;title\x07", "\\x1b]0;title\\x07")\
        .replace("\x1b[2J", "\\x1b[2J").replace("\n", "")
    md = markdown_inline(text)
    assert "\n" not in md and "<" not in md.replace("\\<", "") and "](" not in md.replace(
        "\\](", "")
    assert "<" not in html_text(text) and ">" not in html_text(text)
