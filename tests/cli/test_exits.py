"""Exit codes with one meaning each, a taken API port that stops `run` at once, explicit
selection by --config / $GUARDIAN_STATE_DIR, --version, and `run`'s first line.

Real `guardian` subprocesses and real sockets on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from guardian import __version__
from guardian.cli.advice import config_warnings
from guardian.cli.main import app
from guardian.cli.support import Exit, exit_table
from guardian.config.load import load_config, parse_config
from guardian.store import runfile

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()


def _config(tmp: Path, port: int) -> Path:
    tmp.mkdir(parents=True, exist_ok=True)
    path = tmp / "guardian.toml"
    path.write_text(f"""
[guardian]
log_dir = "{tmp / 'logs'}"
state_dir = "{tmp / 'state'}"
report_dir = "{tmp / 'reports'}"
[api]
port = {port}
[[targets]]
name = "disk"
[[targets.checks]]
kind = "disk"
paths = ["/"]
interval = 60
""")
    return path


def _env(tmp: Path, **extra: str) -> dict[str, str]:
    e = {k: v for k, v in os.environ.items()
         if k not in ("GUARDIAN_CONFIG", "GUARDIAN_STATE_DIR")}
    e.update({"XDG_STATE_HOME": str(tmp / "xdg"), "COLUMNS": "80", "NO_COLOR": "1"}, **extra)
    return e


async def _guardian(tmp: Path, *args: str, entry: str = "guardian",
                    **extra: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", entry, *args, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env=_env(tmp, **extra), cwd=str(tmp))
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.fixture
def taken_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


@pytest.mark.parametrize("entry", ["guardian", "guardian.cli.main"])  # fast path and typer
async def test_a_taken_api_port_stops_run_at_once_saying_what_to_do(tmp_path, taken_port, entry):
    cfg = _config(tmp_path, taken_port)
    code, _, err = await _guardian(tmp_path, "run", "--config", str(cfg), entry=entry)
    assert code == Exit.CANNOT_START == 5, err
    first, second, *_ = err.splitlines()
    api = f"API 127.0.0.1:{taken_port}"
    assert first == f"guardian {__version__} · config {cfg} · dry-run off · {api}"
    assert f"cannot listen on 127.0.0.1:{taken_port} (in use)" in second
    assert f"[api] port in {cfg}" in second and "--api-port 0" in second
    # The store's lock is taken first (a second Guardian is named by its pid); nothing else.
    state = tmp_path / "state"
    assert not state.exists() or {p.name for p in state.iterdir()} <= {"guardian.db.lock"}


async def test_api_port_0_runs_anyway_and_says_dry_run_first(tmp_path, taken_port):
    cfg = _config(tmp_path, taken_port)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "guardian", "run", "--config", str(cfg), "--api-port", "0",
        "--dry-run", "--log-format", "json", stderr=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.DEVNULL, env=_env(tmp_path), cwd=str(tmp_path))
    assert proc.stderr is not None
    lines: list[str] = []
    try:
        while True:
            line = (await asyncio.wait_for(proc.stderr.readline(), 60)).decode()
            assert line, "".join(lines)
            lines.append(line)
            if '"api_started"' in line:
                break
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.communicate(), 60)
    assert lines[0].startswith(f"guardian {__version__} · config {cfg} · dry-run: decides")
    assert "API 127.0.0.1:any free port" in lines[0]
    assert proc.returncode == 0


@pytest.mark.slow
async def test_state_dir_selects_among_several_running_guardians(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    cfg_path = _config(tmp_path / "a", 0)
    cfg = load_config(cfg_path)
    info = runfile.write(cfg, started_at="2026-01-01T00:00:00+00:00", config_path=cfg_path,
                         api_url=None)
    # A second live Guardian elsewhere (this same live process, listed twice).
    (runfile.instances_dir() / "guardian-other.json").write_text(info.to_json())
    try:
        code, _, err = await _guardian(tmp_path, "incidents")
        assert code == Exit.USAGE, err
        assert "several Guardians are running" in err
        code, out, err = await _guardian(tmp_path, "incidents",
                                         GUARDIAN_STATE_DIR=str(tmp_path / "a" / "state"))
        assert code == 0, err
        assert "no incidents recorded" in out or "no open incidents" in out
        code, _, err = await _guardian(tmp_path, "status",
                                       GUARDIAN_STATE_DIR=str(tmp_path / "a" / "state"))
        assert code == Exit.UNREACHABLE, err  # it runs, without an API: not "unhealthy"
        assert "has no API" in err
    finally:
        runfile.remove(cfg)


async def test_a_config_nobody_runs_is_not_answered_by_another_guardian_on_its_port(
        tmp_path, monkeypatch, taken_port):
    """Two configs on one port (both the default 8787, say): with only A running, `status
    --config B` must not show A's stack as B's (nor send B's token to it)."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    a_path = _config(tmp_path / "a", taken_port)
    a = load_config(a_path)
    # "A" is this process, listening on taken_port, as its runtime file says.
    runfile.write(a, started_at="2026-01-01T00:00:00+00:00", config_path=a_path,
                  api_url=f"http://127.0.0.1:{taken_port}")
    b_path = _config(tmp_path / "b", taken_port)
    try:
        code, out, err = await _guardian(tmp_path, "status", "--config", str(b_path))
        assert code == Exit.UNREACHABLE, err
        assert f"no Guardian runs {b_path}" in err
        assert f"is the API of another one (pid {os.getpid()}, {a_path})" in err
        assert out == ""
    finally:
        runfile.remove(a)


def test_version_option_and_usage_errors():
    assert runner.invoke(app, ["--version"]).output.startswith(f"guardian {__version__} (")
    assert runner.invoke(app, ["-V"]).exit_code == 0
    assert runner.invoke(app, ["check", "--no-such-option"]).exit_code == Exit.USAGE


def test_restart_of_a_target_without_a_service_says_so(tmp_path):
    cfg = _config(tmp_path, 0)
    result = runner.invoke(app, ["restart", "disk", "--config", str(cfg)])
    assert result.exit_code == Exit.USAGE
    assert "target 'disk' has no [targets.service]" in result.output
    assert "unknown target" not in result.output
    other = runner.invoke(app, ["restart", "nope", "--config", str(cfg)])
    assert other.exit_code == Exit.USAGE and "unknown target 'nope' (targets: disk)" in other.output


def test_config_validate_warns_about_another_platform_and_deprecated_keys():
    cfg = load_config(ROOT / "guardian.example.toml", env={})
    linux = config_warnings(cfg, "posix")
    assert any("targets[0].service.backend: 'nssm' works on Windows only" in w for w in linux)
    assert any("grace_period is deprecated" in w for w in linux)
    assert any("'C:\\' is a path for Windows, this is Linux" in w for w in linux)
    win = parse_config("""
[guardian]
log_dir = "/var/log/guardian"
[[targets]]
name = "c"
[targets.service]
backend = "systemd"
name = "comfyui.service"
""")
    on_windows = config_warnings(win, "nt")
    assert any("'systemd' works on Linux only, this is Windows" in w for w in on_windows)
    assert any("guardian.log_dir" in w and "is a path for Linux" in w for w in on_windows)
    clean = parse_config("[[targets]]\nname='d'\n[[targets.checks]]\nkind='disk'\npaths=['/']\n")
    assert config_warnings(clean, "posix") == []
    shown = runner.invoke(app, ["config", "validate", str(ROOT / "guardian.example.toml")])
    assert shown.exit_code == 0 and "warning: targets[0].service.backend" in shown.output


def test_the_readme_has_the_exit_code_table():
    assert exit_table() in (ROOT / "README.md").read_text()


async def test_demo_in_a_directory_others_can_change_writes_nothing_and_exits_5(tmp_path):
    """The demo's config carries its API token: never written where others could swap it."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    code, _, err = await _guardian(tmp_path, "demo", "--dir", str(shared / "d"),
                                   "--api-port", "0")
    assert code == Exit.CANNOT_START, err
    assert f"{shared}: writable by others" in err and "chmod go-w" in err
    assert list(shared.iterdir()) == []


def test_queue_without_a_journaled_target_is_a_usage_error(tmp_path):
    """2 means unhealthy or an invalid config: a config without ComfyUI is neither."""
    cfg = _config(tmp_path, 0)
    result = runner.invoke(app, ["queue", "--config", str(cfg)])
    assert result.exit_code == Exit.USAGE == 4, result.output
    assert "no ComfyUI target has a queue journal" in result.output
    named = runner.invoke(app, ["queue", "--config", str(cfg), "--target", "disk"])
    assert named.exit_code == Exit.USAGE and "has no queue journal" in named.output
