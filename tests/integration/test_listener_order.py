"""The bus's listener order is part of the design (runtime.py's docstring says why):
the running Guardian subscribes its parts in exactly that order."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from guardian.config.load import load_config
from guardian.runtime import Guardian


async def test_listeners_are_subscribed_in_the_documented_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    cfg_file = tmp_path / "g.toml"
    cfg_file.write_text(
        f"""
[guardian]
log_dir = {json.dumps(str(tmp_path / "logs"))}
state_dir = {json.dumps(str(tmp_path / "state"))}
report_dir = {json.dumps(str(tmp_path / "reports"))}
[api]
port = 0
[[targets]]
name = "disk"
[[targets.checks]]
kind = "disk"
paths = [{json.dumps(str(tmp_path))}]
interval = 60
warn_gb = 0
critical_gb = 0
"""
    )
    guardian = Guardian(load_config(cfg_file), config_path=cfg_file)
    await guardian.start()
    try:
        owners = [
            type(getattr(listener, "__self__", listener)).__name__
            for listener in guardian.bus._listeners
        ]
    finally:
        await guardian.stop()
    assert owners == [
        "StartupPhases",
        "IncidentTracker",
        "UptimeStore",
        "RecoveryManager",
        "Remediation",
        "LoopBridge",
        "Metrics",
    ], owners
