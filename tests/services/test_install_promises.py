"""install-service keeps what the config promises: children left running survive the
service manager (systemd KillMode, NSSM AppKillProcessTree), a home-directory install runs
as its owner and never chowns their folders, Windows accounts need their password, and
the printed PowerShell is PowerShell. Units go through the real ``systemd-analyze verify``."""

import os
import shutil
import subprocess
import sys
from pathlib import Path, PurePath, PureWindowsPath
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from guardian.cli import homes, install, pwsh
from guardian.cli.install import InstallError, register, systemd_unit, windows_install_plan

BASE: dict[str, Any] = dict(python=sys.executable, config="/etc/guardian/g.toml",
                            working_dir="/etc/guardian", rw_paths=["/var/lib/guardian"],
                            account="guardian")


@pytest.fixture
def cli():
    app = typer.Typer()
    register(app)
    return app


def _config(path: Path, *, leave: bool, cwd: Path, tmp: Path) -> Path:
    path.write_text(f"""
[guardian]
log_dir = "{tmp / 'logs'}"
state_dir = "{tmp / 'state'}"

[[targets]]
name = "comfyui"
[targets.service]
command = ["{sys.executable}", "main.py"]
cwd = "{cwd}"
on_guardian_stop = "{'leave' if leave else 'stop'}"
[[targets.checks]]
kind = "service"
""")
    return path


def test_kill_mode_follows_on_guardian_stop():
    left = systemd_unit(**BASE, leaves_children=True)
    assert "\nKillMode=process\n" in left and "KillMode=mixed" not in left
    stopped = systemd_unit(**BASE)
    assert "\nKillMode=mixed\n" in stopped and "KillMode=process" not in stopped


def test_cli_derives_kill_mode_and_tree_kill_from_the_config(cli, tmp_path, monkeypatch):
    monkeypatch.setattr(install, "is_windows", lambda: False)
    cfg = _config(tmp_path / "g.toml", leave=True, cwd=tmp_path / "comfy", tmp=tmp_path)
    out = CliRunner().invoke(cli, ["install-service", "-c", str(cfg), "--print",
                                   "--account", "root"]).output
    assert "\nKillMode=process\n" in out
    monkeypatch.setattr(install, "is_windows", lambda: True)
    win = CliRunner().invoke(cli, ["install-service", "-c", str(cfg), "--print",
                                   "--nssm", "nssm.exe", "--shell", "cmd"]).output
    assert "nssm.exe set Guardian AppKillProcessTree 0" in win.splitlines()
    stop = _config(tmp_path / "s.toml", leave=False, cwd=tmp_path / "comfy", tmp=tmp_path)
    win = CliRunner().invoke(cli, ["install-service", "-c", str(stop), "--print",
                                   "--nssm", "nssm.exe", "--shell", "cmd"]).output
    assert "AppKillProcessTree" not in win


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
@pytest.mark.parametrize("leave", [True, False])
@pytest.mark.parametrize("account", ["root", "daemon"])
def test_generated_units_pass_systemd_analyze_verify(tmp_path, leave, account):
    unit = systemd_unit(**{**BASE, "account": account, "python": sys.executable,
                           "config": str(tmp_path / "g.toml"), "working_dir": str(tmp_path),
                           "rw_paths": [str(tmp_path / "state"), "/home/alice/ComfyUI"]},
                        env={"GUARDIAN_STATE_DIR": str(tmp_path / "state")},
                        leaves_children=leave)
    path = tmp_path / "guardian.service"
    path.write_text(unit)
    proc = subprocess.run(["systemd-analyze", "verify", str(path)], capture_output=True,
                          text=True, timeout=60)
    mine = [line for line in (proc.stdout + proc.stderr).splitlines() if str(path) in line]
    assert proc.returncode == 0 and mine == [], proc.stdout + proc.stderr
    assert ("KillMode=process" in unit) is leave


# ---------------------------------------------------------------- home directories


@pytest.fixture
def home(monkeypatch):
    """A real home directory (0700) owned by a real account other than root: nobody.

    Under /var/tmp (1777), not pytest's 0700 tmp_path, which nobody could not enter."""
    import pwd
    import tempfile

    nobody = pwd.getpwnam("nobody")
    if os.geteuid() != 0:
        pytest.skip("needs root to hand a directory to another user")
    base = Path(tempfile.mkdtemp(dir="/var/tmp", prefix="guardian-home-"))
    os.chmod(base, 0o755)
    monkeypatch.setattr(homes, "HOME_ROOTS", (PurePath(base),))
    monkeypatch.setattr(install, "is_windows", lambda: False)
    h = base / "nobody"
    (h / "ComfyUI" / "venv" / "bin").mkdir(parents=True)
    for d in [h, *(p for p in h.rglob("*"))]:
        os.chown(d, nobody.pw_uid, nobody.pw_gid)
    os.chmod(h, 0o700)
    yield h
    shutil.rmtree(base, ignore_errors=True)


def _home_config(h: Path) -> Path:
    cfg = h / "guardian.toml"
    cfg.write_text(f"""
[guardian]
log_dir = "{h / '.local/state/guardian/logs'}"
state_dir = "{h / '.local/state/guardian'}"
report_dir = "{h / '.local/state/guardian/reports'}"

[[targets]]
name = "comfyui"
[targets.service]
command = ["{h / 'ComfyUI/venv/bin/python'}", "main.py"]
cwd = "{h / 'ComfyUI'}"
on_guardian_stop = "leave"
[[targets.checks]]
kind = "service"
""")
    os.chown(cfg, os.stat(h).st_uid, os.stat(h).st_gid)
    os.chmod(cfg, 0o600)
    return cfg


def test_home_install_runs_as_the_owner_and_never_chowns(cli, home):
    cfg = _home_config(home)
    py = home / "ComfyUI" / "venv" / "bin" / "python"
    result = CliRunner().invoke(cli, ["install-service", "-c", str(cfg), "--print",
                                      "--python", str(py)])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "\nUser=nobody\nGroup=nobody\n" in out
    assert "the service runs as its owner 'nobody'" in out
    assert "useradd" not in out  # the user exists: it is them
    assert "install -d -o" not in out  # nothing in the home is handed to anyone
    assert f"runuser -u nobody -- mkdir -p {home / '.local/state/guardian'}" in out
    assert "setfacl" not in out and "warning:" not in out  # the owner reaches everything


def test_home_install_for_another_account_says_which_grants(cli, home):
    cfg = _home_config(home)
    py = home / "ComfyUI" / "venv" / "bin" / "python"
    result = CliRunner().invoke(cli, ["install-service", "-c", str(cfg), "--print",
                                      "--python", str(py), "--account", "daemon"])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "\nUser=daemon\n" in out
    assert "install -d -o daemon" not in out  # still no chown of the user's folders
    assert f"setfacl -m u:daemon:x {home}" in out
    assert f"setfacl -m u:daemon:r {cfg}" in out
    assert f"'daemon' cannot enter {home} (mode 0700, owner nobody)" in out
    # the config itself: 0600 and nobody's, unreadable to daemon even once it can enter
    os.chmod(home, 0o755)
    out = CliRunner().invoke(cli, ["install-service", "-c", str(cfg), "--print",
                                   "--python", str(py), "--account", "daemon"]).output
    assert f"'daemon' cannot read {cfg} (mode 0600, owner nobody)" in out
    os.chmod(cfg, 0o644)
    out = CliRunner().invoke(cli, ["install-service", "-c", str(cfg), "--print",
                                   "--python", str(py), "--account", "daemon"]).output
    assert "warning:" not in out


def test_acl_grant_counts_once_made(home):
    """A named-user ACL entry (what setfacl -m u:daemon:x adds) is read back as a grant."""
    import pwd

    daemon = homes.Account.lookup("daemon")
    uid = pwd.getpwnam("daemon").pw_uid
    # version 2; USER_OBJ rwx, USER daemon --x, GROUP_OBJ ---, MASK --x, OTHER ---
    entries = [(0x01, 7, 0xFFFFFFFF), (0x02, 1, uid), (0x04, 0, 0xFFFFFFFF),
               (0x10, 1, 0xFFFFFFFF), (0x20, 0, 0xFFFFFFFF)]
    raw = (2).to_bytes(4, "little") + b"".join(
        t.to_bytes(2, "little") + p.to_bytes(2, "little") + i.to_bytes(4, "little")
        for t, p, i in entries)
    try:
        os.setxattr(home, "system.posix_acl_access", raw)
    except OSError as e:
        pytest.skip(f"no POSIX ACLs on this file system: {e}")
    assert homes.access_warnings(daemon, traverse_to=[home / "ComfyUI"], readable=[]) == []


# ---------------------------------------------------------------- Windows


PY = PureWindowsPath(r"C:\Guardian\venv\Scripts\python.exe")
CFG = PureWindowsPath(r"C:\Program Files\Guardian\guardian.toml")


def _plan(**kw):
    return windows_install_plan(nssm=r"C:\Tools\nssm.exe", service_name="Guardian", python=PY,
                                config=CFG, app_dir=CFG.parent, log_file=r"C:\g\log", **kw)


def test_an_account_without_its_password_is_refused_before_anything_runs():
    with pytest.raises(InstallError, match=r"'\.\\\\alice' needs its password"):
        _plan(object_name=r".\alice")
    with pytest.raises(InstallError, match="needs its password"):
        _plan(object_name=r".\alice", object_password="")
    assert _plan(object_name=r".\alice", object_password="pw")[-1][-2:] == [r".\alice", "pw"]
    for builtin in ("LocalSystem", r"NT AUTHORITY\NetworkService", r"NT SERVICE\Guardian",
                    r"CORP\guardian$"):
        assert _plan(object_name=builtin)[-1][-1] == builtin


def test_printed_powershell_asks_for_the_password_and_never_shows_one(cli, tmp_path,
                                                                     monkeypatch):
    monkeypatch.setattr(install, "is_windows", lambda: True)
    cfg = _config(tmp_path / "g.toml", leave=False, cwd=tmp_path, tmp=tmp_path)
    out = CliRunner().invoke(cli, ["install-service", "-c", str(cfg), "--print", "--nssm",
                                   "nssm.exe", "--object-name", r".\alice",
                                   "--object-password", "s3cret"]).output
    assert "s3cret" not in out
    assert "Read-Host -AsSecureString 'Password of .\\alice'" in out
    assert "& 'nssm.exe' 'set' 'Guardian' 'ObjectName' '.\\alice' $GuardianPassword" in out
    # cmd.exe cannot ask hidden, and "<password>" would be a redirection there: the step is
    # a REM to type by hand, so pasted lines leave the service on LocalSystem.
    cmd = CliRunner().invoke(cli, ["install-service", "-c", str(cfg), "--print", "--nssm",
                                   "nssm.exe", "--object-name", r".\alice", "--shell",
                                   "cmd"]).output.splitlines()
    assert cmd[-2:] == ["REM last step, by hand, with the account's password for PASSWORD:",
                        r"REM nssm.exe set Guardian ObjectName .\alice PASSWORD"]
    assert not any("<" in line or ">" in line for line in cmd)
    refused = CliRunner().invoke(cli, ["install-service", "-c", str(cfg), "--nssm", "nssm.exe",
                                       "--object-name", r".\alice"], input="")
    assert refused.exit_code != 0


def test_powershell_quoting():
    assert pwsh.quote("it's") == "'it''s'"
    assert pwsh.command_line([r"C:\Program Files\nssm.exe", "start", "Guardian"]) == (
        "& 'C:\\Program Files\\nssm.exe' 'start' 'Guardian'")
    line = pwsh.command_line(["nssm.exe", "set", "G", "AppParameters", '-c "C:\\a b\\g.toml"'])
    assert line == "& 'nssm.exe' --% set G AppParameters \"-c \\\"C:\\a b\\g.toml\\\"\""
    with pytest.raises(ValueError):
        pwsh.command_line(["nssm.exe", "set", "G", "AppParameters", '"%PATH%"'])


@pytest.mark.skipif(shutil.which("pwsh") is None, reason="no PowerShell here")
def test_printed_powershell_parses(tmp_path):  # pragma: no cover - only where pwsh exists
    script = "\n".join(pwsh.script(_plan(object_name="LocalSystem")))
    f = tmp_path / "p.ps1"
    f.write_text(script)
    check = ("$e=$null; [void][System.Management.Automation.Language.Parser]::ParseFile("
             f"'{f}', [ref]$null, [ref]$e); exit $e.Count")
    assert subprocess.run(["pwsh", "-NoProfile", "-Command", check], timeout=60).returncode == 0


def test_an_account_still_to_be_created_is_judged_as_others(cli, home):
    cfg = _home_config(home)
    py = home / "ComfyUI" / "venv" / "bin" / "python"
    out = CliRunner().invoke(cli, ["install-service", "-c", str(cfg), "--print", "--python",
                                   str(py), "--account", "guardnew"]).output
    assert "useradd --system --user-group" in out and "guardnew" in out
    assert f"'guardnew' cannot enter {home} (mode 0700, owner nobody)" in out
