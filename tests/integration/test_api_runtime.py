"""The API served by the real runtime: health from cached state, token-guarded restart."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from guardian.config.load import load_config
from guardian.demo.stack import free_port
from guardian.runtime import Guardian

TOKEN = "test-token-123"


def write_config(tmp: Path, api_port: int, sim_port: int) -> Path:
    cfg = tmp / "g.toml"
    cfg.write_text(
        f"""
[guardian]
log_dir = {json.dumps(str(tmp / "logs"))}
report_dir = {json.dumps(str(tmp / "reports"))}
state_dir = {json.dumps(str(tmp / "state"))}
jitter = 0
[api]
port = {api_port}
token = "{TOKEN}"
[[targets]]
name = "comfyui"
[targets.service]
backend = "process"
command = {
            json.dumps(
                [
                    sys.executable,
                    "-m",
                    "guardian.demo.comfyui.server",
                    "--device",
                    "cpu",
                    "--port",
                    str(sim_port),
                ]
            )
        }
[targets.recovery]
grace_period = 5
[[targets.checks]]
kind = "comfyui"
url = "http://127.0.0.1:{sim_port}"
interval = 0.5
timeout = 0.4
[[targets]]
name = "disk"
[[targets.checks]]
kind = "disk"
paths = [{json.dumps(str(tmp))}]
warn_gb = 0
critical_gb = 0
"""
    )
    return cfg


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "guardian", *args], capture_output=True, text=True, timeout=30
    )


@pytest.mark.slow
async def test_api_serves_runtime_state_and_restart_needs_the_token(tmp_path: Path) -> None:
    api_port, sim_port = free_port(), free_port()
    cfg_file = write_config(tmp_path, api_port, sim_port)
    guardian = Guardian(load_config(cfg_file))
    await guardian.start()
    base = f"http://127.0.0.1:{api_port}"
    try:
        async with httpx.AsyncClient(base_url=base, timeout=5) as client:
            for _ in range(100):
                health = (await client.get("/api/health")).json()
                if health["status"] == "healthy" and health["comfyui"]:
                    break
                await asyncio.sleep(0.1)
            assert health["status"] == "healthy", health
            assert health["comfyui"]["online"] is True
            assert (await client.get("/livez")).status_code == 200
            assert (await client.get("/readyz")).status_code == 200
            metrics = (await client.get("/metrics")).text
            assert 'guardian_target_up{critical="true",target="comfyui"} 1.0' in metrics
            assert "text/html" in (await client.get("/")).headers["content-type"]

            backend = guardian.backends["comfyui"]
            old_pid = (await backend.status()).pid
            # the real pid, though the target has no `service` check: the backend knows it
            assert old_pid is not None
            assert health["services"]["comfyui"]["pid"] == old_pid
            path = "/api/targets/comfyui/restart"
            assert (await client.post(path)).status_code == 401
            bad = {"Authorization": "Bearer wrong"}
            assert (await client.post(path, headers=bad)).status_code == 401
            assert (await backend.status()).pid == old_pid  # nothing happened
            good = {"Authorization": f"Bearer {TOKEN}"}
            resp = await client.post(path, headers=good)
            assert resp.status_code == 202, resp.text  # accepted: the restart goes on
            body = resp.json()
            assert (body["state"], body["id"], body["watch"]) == ("queued", 1, "/api/status")
            new_pid: int | None = old_pid
            for _ in range(600):  # until the restart is done (bounded, not a timed assert)
                new_pid = (await backend.status()).pid
                if new_pid not in (None, old_pid) and not guardian._desk.in_flight("comfyui"):
                    break
                await asyncio.sleep(0.05)
            assert new_pid not in (None, old_pid)
            after = (await client.get("/api/health")).json()
            assert after["services"]["comfyui"]["pid"] == new_pid
            unknown = await client.post("/api/targets/nope/restart", headers=good)
            assert unknown.status_code == 404

            # The CLI talks to the same API (in another process, like a user would).
            status = await asyncio.to_thread(cli, "status", "--config", str(cfg_file))
            assert status.returncode in (0, 1), status.stderr
            assert "comfyui" in status.stdout
            restart = await asyncio.to_thread(cli, "restart", "comfyui", "--config", str(cfg_file))
            assert restart.returncode == 0, restart.stderr
            assert "restart #2 of comfyui queued" in restart.stdout
    finally:
        await guardian.stop()
    log = (tmp_path / "logs").glob("*.log")
    assert log is not None


async def test_status_command_shows_an_unhealthy_stack(tmp_path: Path) -> None:
    """/api/health answers 503 when unhealthy; `guardian status` still shows the table."""
    api_port, dead_port = free_port(), free_port()
    cfg_file = tmp_path / "g.toml"
    cfg_file.write_text(
        f"""
[guardian]
log_dir = {json.dumps(str(tmp_path / "logs"))}
state_dir = {json.dumps(str(tmp_path / "state"))}
report_dir = {json.dumps(str(tmp_path / "reports"))}
[api]
port = {api_port}
[[targets]]
name = "panel"
recovery = {{ startup_timeout = 0 }}  # no startup phase: its first failure counts
[[targets.checks]]
kind = "http"
url = "http://127.0.0.1:{dead_port}/api/health"
interval = 5
timeout = 1
"""
    )
    guardian = Guardian(load_config(cfg_file))
    await guardian.start()
    try:
        await guardian.run_checks()
        status = await asyncio.to_thread(cli, "status", "--config", str(cfg_file))
    finally:
        await guardian.stop()
    assert status.returncode == 2, status.stderr
    assert "unhealthy" in status.stdout and "panel" in status.stdout
    assert "connection refused" in status.stdout.lower()
