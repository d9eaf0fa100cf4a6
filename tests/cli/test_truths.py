"""What the CLI says is true: it finds the running Guardian through its runtime file,
shows busy/stuck/startup/breaker states, `check` defers to the daemon (or says it cannot
judge a supervised process from outside), and tables fit 80 columns.

A real API (uvicorn on 127.0.0.1:0) and real `guardian` subprocesses; the runtime file
is this test process's own, so its pid and start time are really alive.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import socket
import stat
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from guardian.api.app import create_app, serve
from guardian.api.context import StaticView
from guardian.config.load import load_config
from guardian.core.result import CheckResult, Status
from guardian.core.state import State
from guardian.incidents.store import Store
from guardian.store import runfile

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def write_config(tmp: Path, *, supervised: bool = False) -> Path:
    service = (
        f'backend = "process"\ncommand = ["{sys.executable}", "-c", "import time; time.sleep(60)"]'
        if supervised else 'backend = "systemd"\nname = "comfyui.service"'
    )
    text = f"""
[guardian]
log_dir = "{tmp / "logs"}"
report_dir = "{tmp / "reports"}"
state_dir = "{tmp / "state"}"

[api]
port = 0
token = "t0ken-for-tests"

[[targets]]
name = "comfyui"
[targets.service]
{service}
[[targets.checks]]
kind = "service"

[[targets]]
name = "panel"
critical = false
[[targets.checks]]
kind = "http"
url = "http://127.0.0.1:9/api/health"
timeout = 0.5
"""
    tmp.mkdir(parents=True, exist_ok=True)
    path = tmp / "guardian.toml"
    path.write_text(text)
    return path


def res(target: str, check: str, status: Status, reason: str = "", **values: object) -> CheckResult:
    return CheckResult(target, check, check, status, reason, values, T0, T0, 0.01)  # type: ignore[arg-type]


def env(tmp: Path, **extra: str) -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if k != "GUARDIAN_CONFIG"}
    e.update({"XDG_STATE_HOME": str(tmp / "xdg"), "COLUMNS": "80", "NO_COLOR": "1"}, **extra)
    return e


async def guardian(tmp: Path, *args: str, cwd: Path | None = None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "guardian", *args, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env=env(tmp), cwd=str(cwd or tmp),
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.fixture
async def daemon(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[
        tuple[Path, StaticView]]:
    """A served view plus the runtime file a real `guardian run` would write for it."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    path = write_config(tmp_path / "cfg")
    cfg = load_config(path)
    state = State(cfg)
    state.record(res("comfyui", "service", Status.OK, "service running", state="running"))
    state.record(dataclasses.replace(
        res("comfyui", "comfyui", Status.OK, "busy: prompt 5d0c1a2b running for 754 s",
            busy=True, running_prompt_id="5d0c1a2b-77", running_for_s=754.0)))
    state.record(dataclasses.replace(
        res("panel", "http", Status.FAILED, "connection refused"), startup=True))
    view = StaticView(config=cfg, state=state, recovery={"comfyui": {
        "attempts": 3, "breaker_open": True, "last_restart": T0.isoformat()}})
    server = await serve(create_app(view), "127.0.0.1", 0)
    runfile.write(cfg, started_at=T0.isoformat(), config_path=path, api_url=server.url)
    try:
        yield path, view
    finally:
        runfile.remove(cfg)
        await server.stop()


def test_runtime_file_private_alive_and_stale(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                              ) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    cfg = load_config(write_config(tmp_path))
    api = socket.create_server(("127.0.0.1", 0))  # the file is believed only for a live port
    info = runfile.write(cfg, started_at=T0.isoformat(), config_path=None,
                         api_url=f"http://127.0.0.1:{api.getsockname()[1]}")
    path = runfile.runtime_path(cfg)
    assert path.parent == cfg.store_path.parent
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert runfile.find_running(cfg) == info
    assert runfile.discover() == [info]
    # Same pid, other start time: a recycled pid, not this Guardian.
    stale = dataclasses.replace(info, process_started=info.process_started - 3600)
    path.write_text(stale.to_json())
    assert runfile.find_running(cfg) is None
    (runfile.instances_dir() / f"guardian-{os.getpid()}.json").write_text(stale.to_json())
    assert runfile.discover() == []
    assert not list(runfile.instances_dir().glob("*.json"))  # the stale copy is gone
    runfile.remove(cfg)
    assert path.exists()  # not ours any more (stale content): left alone
    path.write_text(info.to_json())
    runfile.remove(cfg)
    assert not path.exists()
    api.close()


async def test_status_shows_states_from_the_real_api_port(daemon: tuple[Path, StaticView],
                                                          tmp_path: Path) -> None:
    path, _ = daemon
    code, out, err = await guardian(tmp_path, "status", "--config", str(path))
    assert code == 1, err  # comfyui ok (busy); the non-critical panel fails: degraded
    assert "BREAKER OPEN" in out
    assert out.splitlines()[0] == "Guardian: degraded · breaker open: comfyui"
    assert "busy 5d0c1a2b 754 s" in out
    assert "starting up" in out
    assert all(len(line) <= 80 for line in out.splitlines()), out


async def test_without_config_the_running_guardian_is_found(
        daemon: tuple[Path, StaticView], tmp_path: Path) -> None:
    empty = tmp_path / "elsewhere"
    empty.mkdir()
    code, out, err = await guardian(tmp_path, "status", cwd=empty)
    assert code == 1, err
    assert "BREAKER OPEN" in out


@pytest.mark.slow
async def test_check_shows_the_daemons_view(daemon: tuple[Path, StaticView], tmp_path: Path
                                            ) -> None:
    path, _ = daemon
    code, out, err = await guardian(tmp_path, "check", "--config", str(path), "--json")
    assert code == 1, err
    body = json.loads(out)
    assert body["source"] == "daemon"
    assert {t["name"] for t in body["targets"]} == {"comfyui", "panel"}
    assert "running Guardian" in err


@pytest.mark.slow
async def test_check_from_outside_does_not_judge_supervised_processes(tmp_path: Path) -> None:
    path = write_config(tmp_path / "cfg", supervised=True)
    code, out, err = await guardian(tmp_path, "check", "--config", str(path), "--json",
                                    "--target", "comfyui")
    body = json.loads(out)
    (svc,) = [r for r in body["results"] if r["kind"] == "service"]
    assert svc["status"] == "skipped"
    assert "cannot be judged from outside" in svc["reason"]
    assert code == 0, err


@pytest.mark.slow
async def test_status_without_a_running_guardian_says_so(tmp_path: Path) -> None:
    path = write_config(tmp_path / "cfg")
    code, _, err = await guardian(tmp_path, "status", "--config", str(path))
    assert code == 3  # cannot reach Guardian, not "unhealthy"
    assert "no runtime file" in err and "cannot reach Guardian" in err


@pytest.mark.slow
async def test_incidents_fit_80_columns(tmp_path: Path) -> None:
    path = write_config(tmp_path / "cfg")
    cfg = load_config(path)
    store = Store.from_config(cfg)
    for n in range(3):
        i = store.open_incident("comfyui", T0 + timedelta(hours=n), "critical",
                                "ComfyUI queue stuck: 3 pending, nothing running for 412 s "
                                "(prompt 5d0c1a2b-77aa-4e0e-9d5c)")
        if n == 0:
            store.update_incident(i.id, status="resolved", resolved_at=T0 + timedelta(minutes=5))
    store.close()
    code, out, err = await guardian(tmp_path, "incidents", "--all", "--config", str(path))
    assert code == 0, err
    lines = out.splitlines()
    assert all(len(line) <= 80 for line in lines), out
    header = next(line for line in lines if "ID" in line)
    for word in ("Target", "Status", "Opened UTC", "Closed UTC", "Failures"):
        assert word in header, header
    assert "12:05 (5m)" in out  # the resolved one's close time, same day, and how long
    assert out.count("ComfyUI queue") == 3
    # two lines per incident: its facts, then its summary cut to the width
    assert len(lines) == 2 + 2 * 3, out
