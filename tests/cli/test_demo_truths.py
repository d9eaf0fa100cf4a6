"""The demo: every fault mode documented, and the API port it advertises is one it can get."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from typer.testing import CliRunner

from guardian.cli.main import app
from guardian.demo import panel as panel_sim
from guardian.demo.comfyui import server as comfyui_sim
from guardian.demo.faults import FAULT_GUIDE, fault_markdown
from guardian.demo.stack import api_port_for_demo, demo_banner, prepare_demo

README = Path(__file__).resolve().parents[2] / "README.md"


def test_every_fault_mode_is_documented() -> None:
    documented = {(g.sim, g.mode) for g in FAULT_GUIDE}
    wanted = {("comfyui", m) for m in comfyui_sim.FAULT_MODES} | {
        ("panel", m) for m in panel_sim.FAULT_MODES}
    assert documented == wanted
    assert fault_markdown() in README.read_text(encoding="utf-8")


def test_demo_help_lists_every_mode() -> None:
    out = CliRunner().invoke(app, ["demo", "--help"], env={"COLUMNS": "200"}).output
    for g in FAULT_GUIDE:
        assert f"{g.sim} {g.mode}:" in out


def test_taken_8787_gives_another_port_and_the_banner_names_it(tmp_path: Path) -> None:
    holder = socket.socket()
    try:
        holder.bind(("127.0.0.1", 8787))
        holder.listen()
    except OSError:
        pass  # someone else holds it: the same situation
    try:
        port = api_port_for_demo(None)
        assert port != 8787
        with pytest.raises(OSError, match="in use"):
            api_port_for_demo(8787)
        cfg, path = prepare_demo(tmp_path / "demo")
        assert cfg.api.port not in (0, 8787)
        assert f"http://127.0.0.1:{cfg.api.port}/" in demo_banner(cfg, path)
    finally:
        holder.close()
