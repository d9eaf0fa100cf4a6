"""install-service: exact plans, the unit text, --print via CliRunner, the plan run
against the fake nssm."""

import asyncio
import re
import shlex
from pathlib import Path, PureWindowsPath
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from guardian.cli import install
from guardian.cli.install import (
    InstallError,
    register,
    run_plan,
    systemd_unit,
    windows_install_plan,
    windows_uninstall_plan,
)

REPO = Path(__file__).resolve().parents[2]
PY = PureWindowsPath(r"C:\Guardian\venv\Scripts\python.exe")
CFG = PureWindowsPath(r"C:\Program Files\Guardian\guardian.toml")
LOG = PureWindowsPath(r"C:\ProgramData\Guardian\logs\guardian-service.log")


def plan(**kw):
    args: dict[str, Any] = dict(
        nssm="nssm.exe",
        service_name="Guardian",
        python=PY,
        config=CFG,
        app_dir=CFG.parent,
        log_file=LOG,
    )
    args.update(kw)
    return windows_install_plan(**args)


def test_windows_install_plan_exact():
    s = ["nssm.exe", "set", "Guardian"]
    assert plan(env={"GUARDIAN_API_PORT": "8787"}) == [
        ["nssm.exe", "install", "Guardian", str(PY)],
        [*s, "AppParameters", f'-m guardian run --config "{CFG}"'],
        [*s, "AppDirectory", r"C:\Program Files\Guardian"],
        [*s, "DisplayName", "Guardian watchdog"],
        [*s, "Description", install.DESCRIPTION],
        [*s, "Start", "SERVICE_AUTO_START"],
        [*s, "AppStdout", str(LOG)],
        [*s, "AppStderr", str(LOG)],
        [*s, "AppRotateFiles", "1"],
        [*s, "AppRotateOnline", "1"],
        [*s, "AppRotateBytes", "10485760"],
        [*s, "AppExit", "Default", "Restart"],
        [*s, "AppRestartDelay", "5000"],
        [*s, "AppStopMethodConsole", "15000"],
        [*s, "AppEnvironmentExtra", "PYTHONUNBUFFERED=1", "PYTHONUTF8=1", "GUARDIAN_API_PORT=8787"],
    ]


def test_windows_plan_object_name_and_plain_config_path():
    p = plan(config=PureWindowsPath(r"C:\g\g.toml"), object_name=r"NT AUTHORITY\LocalService")
    assert p[1][-1] == r"-m guardian run --config C:\g\g.toml"
    assert p[-1] == ["nssm.exe", "set", "Guardian", "ObjectName", r"NT AUTHORITY\LocalService"]


@pytest.mark.parametrize(
    "kw",
    [
        {"service_name": "Guardian & del C:\\*"},
        {"service_name": "-H evil"},
        {"env": {"BAD KEY": "x"}},
        {"env": {"K": "line\nbreak"}},
        {"description": "two\nlines"},
    ],
)
def test_windows_plan_rejects_bad_input(kw):
    with pytest.raises((ValueError, InstallError)):
        plan(**kw)


def test_windows_uninstall_plan():
    assert windows_uninstall_plan(nssm="nssm", service_name="Guardian") == [
        ["nssm", "stop", "Guardian"],
        ["nssm", "remove", "Guardian", "confirm"],
    ]


def test_systemd_unit_text():
    unit = systemd_unit(
        python="/opt/guardian/venv/bin/python",
        config="/etc/guardian/guardian.toml",
        working_dir="/etc/guardian",
        rw_paths=["/var/log/guardian", "/var/lib/guardian", "/var/lib/guardian/reports",
                  "/var/log/guardian"],
    )
    body = [line for line in unit.splitlines() if line and not line.startswith("#")]
    assert body == [
        "[Unit]",
        f"Description={install.DESCRIPTION}",
        "After=network-online.target",
        "Wants=network-online.target",
        "[Service]",
        "Type=simple",
        "ExecStart=/opt/guardian/venv/bin/python -m guardian run --config "
        "/etc/guardian/guardian.toml",
        "WorkingDirectory=/etc/guardian",
        "Environment=PYTHONUNBUFFERED=1",
        "Environment=PYTHONUTF8=1",
        "Restart=on-failure",
        "RestartSec=5",
        "KillMode=mixed",
        "TimeoutStopSec=30",
        "LimitNOFILE=65536",
        "NoNewPrivileges=yes",
        "ProtectSystem=full",
        "ProtectHome=read-only",
        "PrivateTmp=yes",
        "ReadWritePaths=-/var/log/guardian -/var/lib/guardian",
        "[Install]",
        "WantedBy=multi-user.target",
    ]
    # Guardian must still be able to run systemctl against other units and see the GPU.
    for forbidden in ("PrivateDevices", "RestrictAddressFamilies", "PrivateNetwork",
                      "SystemCallFilter", "ProtectKernel", "PrivateUsers", "User="):
        assert f"\n{forbidden}" not in unit


def test_systemd_unit_quoting_and_user_mode():
    unit = systemd_unit(
        python="/home/me/my venv/bin/python",
        config="/home/me/100%/g$.toml",
        working_dir="/home/me",
        rw_paths=["/home/me/state"],
        user=True,
        env={"NOTE": 'say "hi"'},
    )
    assert (
        'ExecStart="/home/me/my venv/bin/python" -m guardian run --config /home/me/100%%/g$$.toml'
        in unit
    )
    assert 'Environment="NOTE=say \\"hi\\""' in unit
    assert "WantedBy=default.target" in unit
    assert "ProtectHome" not in unit and "ReadWritePaths" not in unit
    assert "NoNewPrivileges=yes" in unit


def shipped_unit() -> str:
    return systemd_unit(
        python="/opt/guardian/venv/bin/python",
        config="/etc/guardian/guardian.toml",
        working_dir="/etc/guardian",
        rw_paths=["/var/log/guardian", "/var/lib/guardian", "/var/lib/guardian/reports"],
        account=install.DEFAULT_ACCOUNT,
        env={"GUARDIAN_LOG_DIR": "/var/log/guardian", "GUARDIAN_STATE_DIR": "/var/lib/guardian",
             "GUARDIAN_REPORT_DIR": "/var/lib/guardian/reports"},
    )


def test_shipped_unit_is_the_generated_one():
    shipped = (REPO / "deploy" / "systemd" / "guardian.service").read_text()
    assert shipped == shipped_unit()


def test_powershell_installer_passes_only_real_options(cli):
    """The .ps1 delegates to install-service: every option it passes must exist there."""
    import typer.main

    ps1 = (REPO / "deploy" / "windows" / "install-guardian.ps1").read_text()
    assert "$nssmm" not in ps1
    assert "$ErrorActionPreference = 'Continue'" in ps1
    passed = set(re.findall(r"'(--[a-z-]+)'", ps1))
    assert {"--config", "--name", "--python", "--nssm", "--print"} <= passed
    command = typer.main.get_command(cli)
    install_cmd = command.commands["install-service"]  # type: ignore[attr-defined]
    known = {opt for param in install_cmd.params for opt in param.opts}
    assert passed <= known
    assert "'install-service'" in ps1


# --------------------------------------------------------------------------- CLI


@pytest.fixture
def cli():
    app = typer.Typer()
    register(app)
    return app


@pytest.fixture
def config_file(tmp_path):
    cfg = tmp_path / "guardian.toml"
    cfg.write_text(
        f"""
[guardian]
log_dir = "{tmp_path / 'logs'}"
state_dir = "{tmp_path / 'state'}"
report_dir = "{tmp_path / 'state' / 'reports'}"

[[targets]]
name = "comfyui"
[targets.service]
command = ["python", "main.py"]
cwd = "{tmp_path / 'comfy'}"
[[targets.checks]]
kind = "service"
"""
    )
    return cfg


def test_print_windows_plan(cli, config_file, monkeypatch, empty_path):
    monkeypatch.setattr(install, "is_windows", lambda: True)
    result = CliRunner().invoke(
        cli, ["install-service", "--config", str(config_file), "--print", "--python", "py.exe"]
    )
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("# PowerShell")
    assert lines[1] == "& 'nssm.exe' 'install' 'Guardian' 'py.exe'"
    assert lines[2] == 'if ($LASTEXITCODE -ne 0) { throw "failed (exit $LASTEXITCODE)" }'
    assert lines[3] == (
        f"& 'nssm.exe' 'set' 'Guardian' 'AppParameters' '-m guardian run --config {config_file}'"
    )
    log = config_file.parent / "logs" / install.SERVICE_LOG
    assert f"& 'nssm.exe' 'set' 'Guardian' 'AppStdout' '{log}'" in lines
    assert len(lines) == 1 + 2 * 15
    assert not (config_file.parent / "logs").exists()  # --print changes nothing
    cmd = CliRunner().invoke(cli, ["install-service", "--config", str(config_file), "--print",
                                   "--python", "py.exe", "--shell", "cmd"]).output.splitlines()
    assert cmd[0] == "nssm.exe install Guardian py.exe"
    assert cmd[1] == f'nssm.exe set Guardian AppParameters "-m guardian run --config {config_file}"'
    assert len(cmd) == 15


def test_print_systemd_unit(cli, config_file, monkeypatch, tmp_path):
    monkeypatch.setattr(install, "is_windows", lambda: False)
    result = CliRunner().invoke(
        cli,
        ["install-service", "-c", str(config_file), "--print", "--python", "/venv/bin/python"],
    )
    assert result.exit_code == 0, result.output
    out = result.output
    assert out.startswith("# /etc/systemd/system/guardian.service\n")
    assert f"ExecStart=/venv/bin/python -m guardian run --config {config_file}\n" in out
    # logs, state (reports inside it) and the supervised process's cwd stay writable
    rw = f"-{tmp_path / 'logs'} -{tmp_path / 'state'} -{tmp_path / 'comfy'}"
    assert f"ReadWritePaths={rw}\n" in out
    assert out.rstrip().endswith(
        "systemctl daemon-reload && systemctl enable --now guardian.service"
    )


def test_user_unit_is_written(cli, config_file, monkeypatch, tmp_path):
    monkeypatch.setattr(install, "is_windows", lambda: False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    result = CliRunner().invoke(
        cli, ["install-service", "-c", str(config_file), "--user", "--name", "Watch"]
    )
    assert result.exit_code == 0, result.output
    unit = tmp_path / "xdg" / "systemd" / "user" / "watch.service"
    assert unit.read_text().startswith("# Generated by `guardian install-service`")
    assert "systemctl --user daemon-reload && systemctl --user enable --now watch.service" in (
        result.output
    )


def test_cli_errors_are_clear(cli, tmp_path, monkeypatch):
    monkeypatch.setattr(install, "is_windows", lambda: False)
    bad = tmp_path / "bad.toml"
    bad.write_text("[guardian]\nlog_level = 'loud'\n")
    result = CliRunner().invoke(cli, ["install-service", "-c", str(bad), "--print"])
    assert result.exit_code == 2
    assert "log_level" in result.output
    result = CliRunner().invoke(
        cli, ["install-service", "-c", str(bad), "--name", "a;rm -rf /", "--print"]
    )
    assert result.exit_code == 4 and "invalid service name" in result.output


def test_uninstall_print(cli, monkeypatch, empty_path):
    monkeypatch.setattr(install, "is_windows", lambda: True)
    result = CliRunner().invoke(cli, ["uninstall-service", "--print", "--nssm",
                                      r"C:\Program Files\nssm\nssm.exe"])
    # PowerShell that pastes, as install's (a quoted program path is cmd.exe's syntax, a
    # parse error there); stopping a stopped service may fail, removing it may not.
    assert result.output.splitlines() == [
        "# PowerShell (as Administrator). cmd.exe syntax: --shell cmd",
        r"& 'C:\Program Files\nssm\nssm.exe' 'stop' 'Guardian'",
        r"& 'C:\Program Files\nssm\nssm.exe' 'remove' 'Guardian' 'confirm'",
        'if ($LASTEXITCODE -ne 0) { throw "failed (exit $LASTEXITCODE)" }',
    ]
    result = CliRunner().invoke(cli, ["uninstall-service", "--print", "--shell", "cmd"])
    assert result.output.splitlines() == [
        "nssm.exe stop Guardian",
        "nssm.exe remove Guardian confirm",
    ]
    monkeypatch.setattr(install, "is_windows", lambda: False)
    result = CliRunner().invoke(cli, ["uninstall-service"])
    assert "systemctl disable --now guardian.service" in result.output


def test_install_runs_plan_against_fake_nssm(cli, config_file, monkeypatch, fake_tools):
    monkeypatch.setattr(install, "is_windows", lambda: True)
    args = ["install-service", "-c", str(config_file), "--python", "C:\\py.exe",
            "--env", "A=1"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    nssm = fake_tools.path("nssm.exe")
    expected = windows_install_plan(
        nssm=nssm,
        service_name="Guardian",
        python="C:\\py.exe",
        config=config_file,
        app_dir=config_file.parent,
        log_file=config_file.parent / "logs" / install.SERVICE_LOG,
        env={"A": "1"},
    )
    assert fake_tools.calls("nssm.exe") == [argv[1:] for argv in expected]
    svc = fake_tools.state()["windows"]["Guardian"]
    assert svc["params"]["AppRotateBytes"] == "10485760"
    assert svc["params"]["AppExit"] == ["Default", "Restart"]
    assert (config_file.parent / "logs").is_dir()

    # a second install fails clearly; uninstall removes it
    again = CliRunner().invoke(cli, args)
    assert again.exit_code == 1  # a step failed
    assert "already exists" in again.output
    result = CliRunner().invoke(cli, ["uninstall-service"])
    assert result.exit_code == 0, result.output
    assert "Guardian" not in fake_tools.state()["windows"]
    assert fake_tools.calls("nssm.exe")[-2:] == [
        ["stop", "Guardian"],
        ["remove", "Guardian", "confirm"],
    ]


def test_run_plan_stops_at_first_failure(fake_tools):
    nssm = fake_tools.path("nssm.exe")
    plan_ = [[nssm, "set", "Nope", "Start", "SERVICE_AUTO_START"], [nssm, "status", "Nope"]]
    with pytest.raises(InstallError, match=r"set Nope.*exit 3.*Can't open service"):
        asyncio.run(run_plan(plan_, echo=False))
    assert len(fake_tools.calls()) == 1


def test_install_without_nssm_is_a_clear_error(cli, config_file, monkeypatch, empty_path):
    monkeypatch.setattr(install, "is_windows", lambda: True)
    result = CliRunner().invoke(cli, ["install-service", "-c", str(config_file)])
    assert result.exit_code == 1
    assert "nssm.exe not found" in result.output


def test_shlex_roundtrip_of_printed_linux_steps():
    steps = install.systemd_disable_steps("Guardian", user=False)
    assert [shlex.split(" ".join(s)) for s in steps] == steps


# ---------------------------------------------------------------- accounts and sandbox


def test_default_system_unit_runs_as_guardian_with_setup_steps(cli, tmp_path, monkeypatch):
    monkeypatch.setattr(install, "is_windows", lambda: False)
    cfg = tmp_path / "g.toml"
    cfg.write_text(
        f"""
[guardian]
log_dir = "{tmp_path / 'logs'}"
state_dir = "{tmp_path / 'state'}"

[[targets]]
name = "comfyui"
[targets.service]
backend = "systemd"
name = "comfyui.service"
[[targets.checks]]
kind = "service"
"""
    )
    out = CliRunner().invoke(cli, ["install-service", "-c", str(cfg), "--print"]).output
    assert "\nUser=guardian\nGroup=guardian\n" in out
    assert f"Environment=GUARDIAN_LOG_DIR={tmp_path / 'logs'}\n" in out
    assert "useradd --system --user-group" in out
    assert f"install -d -o guardian -g guardian -m 0750 {tmp_path / 'logs'}" in out
    assert '["comfyui.service"].indexOf(action.lookup("unit"))' in out
    assert 'subject.user == "guardian"' in out
    root = CliRunner().invoke(cli, ["install-service", "-c", str(cfg), "--print",
                                    "--account", "root"]).output
    assert "User=" not in root and "useradd" not in root
    bad = CliRunner().invoke(cli, ["install-service", "-c", str(cfg), "--print",
                                   "--account", "x; rm -rf /"])
    assert bad.exit_code == 4 and "invalid user or group name" in bad.output


def test_sandbox_keeps_tmp_and_home_paths_working():
    base: dict[str, Any] = dict(python="/opt/g/venv/bin/python", config="/etc/guardian/g.toml",
                working_dir="/etc/guardian", rw_paths=["/var/lib/guardian"], account="guardian")
    unit = systemd_unit(**base)
    assert "PrivateTmp=yes" in unit and "ProtectHome=read-only" in unit
    # A venv or config under /tmp would vanish behind a private /tmp.
    in_tmp = systemd_unit(**{**base, "python": "/tmp/venv/bin/python"})
    assert "\nPrivateTmp" not in in_tmp and "PrivateTmp left out" in in_tmp
    used_tmp = systemd_unit(**base, used_paths=["/var/tmp/comfy"])
    assert "\nPrivateTmp" not in used_tmp
    # A supervised ComfyUI in a home directory writes outputs and caches there.
    home = systemd_unit(**base, supervises_in_home=True)
    assert "\nProtectHome" not in home and "ProtectHome left out" in home
    # A venv in /home only needs reading: read-only /home keeps it working.
    venv_home = systemd_unit(**{**base, "python": "/home/me/venv/bin/python"})
    assert "ProtectHome=read-only" in venv_home


def test_supervised_in_home_is_derived_from_the_config(tmp_path):
    from guardian.config.load import parse_config

    cfg = parse_config(
        """
[[targets]]
name = "comfyui"
[targets.service]
command = ["/home/me/ComfyUI/venv/bin/python", "main.py"]
[[targets.checks]]
kind = "service"
"""
    )
    assert install.supervises_in_home(cfg)
    assert Path("/home/me/ComfyUI/venv/bin/python") in install.used_paths(cfg)


def test_user_unit_has_no_network_online_target():
    unit = systemd_unit(python="/usr/bin/python3", config="/home/me/g.toml",
                        working_dir="/home/me", rw_paths=[], user=True, account="guardian")
    assert "network-online" not in unit
    assert "User=" not in unit  # a user unit runs as its user
