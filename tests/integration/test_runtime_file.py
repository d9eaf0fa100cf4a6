"""The real runtime: runtime file with the API's actual port (config says 0), uptime
counted from real check results into the store, both cleaned up / flushed at stop."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import stat
import sys
from pathlib import Path

import httpx
import pytest

from guardian.config.load import load_config
from guardian.runtime import Guardian
from guardian.store import runfile
from guardian.uptime.store import UPTIME_SCHEMA_VERSION


@pytest.mark.slow
async def test_runtime_file_uptime_and_status_on_port_0(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    cfg_file = tmp_path / "g.toml"
    cfg_file.write_text(
        f"""
[guardian]
log_dir = {json.dumps(str(tmp_path / "logs"))}
state_dir = {json.dumps(str(tmp_path / "state"))}
report_dir = {json.dumps(str(tmp_path / "reports"))}
jitter = 0
[api]
port = 0
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
    cfg = load_config(cfg_file)
    guardian = Guardian(cfg, config_path=cfg_file)
    await guardian.start()
    try:
        info = runfile.find_running(cfg)
        assert info is not None and guardian.api is not None
        # Uptime is a component of the one store Database, not a connection of its own.
        assert guardian.uptime_counts is not None and guardian.uptime_counts.db is guardian.db
        assert info.api_url == guardian.api.url and not info.api_url.endswith(":0")
        assert info.config_path == str(cfg_file.resolve())
        assert stat.S_IMODE(runfile.runtime_path(cfg).stat().st_mode) == 0o600
        async with httpx.AsyncClient(base_url=info.api_url, timeout=5) as client:
            for _ in range(100):
                up = (await client.get("/api/uptime")).json()
                if up["targets"]["disk"]["windows"]["24h"]["total"] >= 3:
                    break
                await asyncio.sleep(0.1)
            day = up["targets"]["disk"]["windows"]["24h"]
            assert day["total"] >= 3 and day["ok"] == day["total"] and day["percent"] == 100.0
        # `guardian status` finds the real port through the runtime file.
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "guardian", "status", "--config", str(cfg_file),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, err.decode()
        assert "disk" in out.decode()
    finally:
        await guardian.stop()
    assert not runfile.runtime_path(cfg).exists()
    db = sqlite3.connect(str(cfg.store_path))
    try:
        total = db.execute("SELECT SUM(total) FROM uptime WHERE target = 'disk'").fetchone()[0]
        versions = dict(db.execute("SELECT component, version FROM guardian_schema").fetchall())
    finally:
        db.close()
    assert total >= 3
    assert versions["uptime"] == UPTIME_SCHEMA_VERSION
