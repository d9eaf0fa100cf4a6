"""Install Guardian itself as a service: NSSM on Windows, a systemd unit on Linux.

Plans are built as data first (argv lists, unit text) and only then run or printed, so
``--print`` shows exactly what would run and tests check the exact commands. Guardian
must keep its own power to restart other services, which shapes both: the NSSM service
runs as LocalSystem unless told otherwise, and the systemd unit's sandbox leaves D-Bus,
/dev and the network alone (see :func:`systemd_unit`).
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path, PurePath
from typing import Annotated

import typer

from guardian.cli import homes
from guardian.cli.install_windows import (
    DEFAULT_ENV,
    DESCRIPTION,
    DISPLAY_NAME,
    SERVICE_LOG,
    BadConfig,
    InstallError,
    StepFailed,
    _check_env,
    _nssm_path,
    install_windows,
    needs_no_password,
    run_plan,
    windows_install_plan,
    windows_uninstall_plan,
)
from guardian.config.errors import ConfigError
from guardian.config.load import load_config
from guardian.config.schema import Config
from guardian.services.base import validate_service_name
from guardian.support.private_file import write_private_text
from guardian.support.redact import is_secret_name, redact_env

__all__ = ["DESCRIPTION", "DISPLAY_NAME", "SERVICE_LOG", "InstallError", "install_service",
           "run_plan", "systemd_unit", "windows_install_plan", "windows_uninstall_plan"]

DEFAULT_NAME = "Guardian"


def is_windows() -> bool:
    """The one platform switch; tests replace it to exercise both paths anywhere."""
    return os.name == "nt"


# --------------------------------------------------------------------------- systemd


def _systemd_quote(arg: str) -> str:
    """One word for ExecStart=/Environment=: ``%`` and ``$`` escaped, quoted if needed."""
    if any(c in arg for c in "\n\r\x00"):
        raise InstallError(f"{arg!r} contains a newline or NUL")
    arg = arg.replace("%", "%%").replace("$", "$$")
    if arg and not re.search(r"[\s\"'\\;]", arg):
        return arg
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _minimal_paths(paths: Iterable[PurePath]) -> list[PurePath]:
    """Drop duplicates and paths inside another listed path, keeping first-seen order."""
    unique: list[PurePath] = []
    for p in paths:
        if p not in unique:
            unique.append(p)
    return [p for p in unique if not any(o != p and p.is_relative_to(o) for o in unique)]


DEFAULT_ACCOUNT = "guardian"  # a system user: useradd --system (see deploy/systemd/README.md)
HOME_DIRS = (PurePath("/home"), PurePath("/root"), PurePath("/run/user"))
TMP_DIRS = (PurePath("/tmp"), PurePath("/var/tmp"))


def _under(path: PurePath, roots: Iterable[PurePath]) -> bool:
    return any(path == r or path.is_relative_to(r) for r in roots)


def systemd_unit(
    *,
    python: str | PurePath,
    config: str | PurePath,
    working_dir: str | PurePath,
    rw_paths: Iterable[str | PurePath],
    user: bool = False,
    description: str = DESCRIPTION,
    env: Mapping[str, str] | None = None,
    account: str | None = None,
    group: str | None = None,
    used_paths: Iterable[str | PurePath] = (),
    supervises_in_home: bool = False,
    leaves_children: bool = False,
) -> str:
    """The unit file text for running Guardian under systemd.

    Hardening is chosen so Guardian keeps its job: NoNewPrivileges, a read-only /usr,
    /boot and /etc, a read-only /home and a private /tmp, writable only where it keeps
    logs, state and reports (and where processes it supervises work, since they inherit
    this sandbox). Deliberately absent: PrivateDevices (hides /dev/nvidia*),
    RestrictAddressFamilies / PrivateNetwork (systemctl talks D-Bus over AF_UNIX, checks
    use HTTP), ProtectKernel*/SystemCallFilter (systemctl restarts other units). A user
    unit gets only NoNewPrivileges: the other options need namespaces a user manager may
    not have, and ProtectHome would lock the user out of their own files.

    ``account``/``group``: ``User=``/``Group=`` of a system unit (None: root, no line).
    The sandbox adapts to where things are instead of breaking them: ``PrivateTmp`` is left
    out when Guardian's interpreter, config or any path it uses (``used_paths``, and the
    writable ones) lies under /tmp or /var/tmp, and ``ProtectHome`` when a process Guardian
    supervises lives in a home directory (it writes outputs and caches there).

    ``leaves_children``: a target has ``on_guardian_stop = "leave"``. ``KillMode=process``
    then, so neither ``systemctl stop/restart`` nor a crash of Guardian kills what it left
    for the next Guardian to adopt; the ``"stop"`` ones Guardian stops itself. Otherwise
    ``KillMode=mixed``: SIGTERM to Guardian, SIGKILL to whatever is left after it exits.
    """
    environment = {**DEFAULT_ENV, **(env or {})}
    _check_env(environment)
    if any(c in description for c in "\r\n\x00"):
        raise InstallError("description contains a newline or NUL")
    exec_start = " ".join(
        _systemd_quote(a) for a in (str(python), "-m", "guardian", "run", "--config", str(config))
    )
    for name in (account, group):
        if name is not None and not re.fullmatch(r"[a-z_][a-z0-9_-]{0,31}\$?", name):
            raise InstallError(f"invalid user or group name {name!r}")
    lines = [
        "# Generated by `guardian install-service`; re-run it after moving Guardian.",
        "[Unit]",
        f"Description={description}",
    ]
    if not user:  # a user manager has no network-online.target: the lines would do nothing
        lines += ["After=network-online.target", "Wants=network-online.target"]
    lines += [
        "",
        "[Service]",
        "Type=simple",
        f"ExecStart={exec_start}",
        f"WorkingDirectory={_systemd_quote(str(working_dir))}",
        *(f"Environment={_systemd_quote(f'{k}={v}')}" for k, v in environment.items()),
        "Restart=on-failure",
        "RestartSec=5",
        *(["# on_guardian_stop = \"leave\": systemd signals Guardian only and leaves the",
            "# processes it runs alive for the next Guardian to adopt (stop and crash alike).",
            "KillMode=process"] if leaves_children else
          ["# SIGTERM to Guardian only: it stops the processes it supervises itself, in order.",
           "KillMode=mixed"]),
        "TimeoutStopSec=30",
        "LimitNOFILE=65536",
        "NoNewPrivileges=yes",
    ]
    if not user:
        if account is not None and account != "root":
            lines.append(f"User={account}")
            lines.append(f"Group={group or account}")
        paths = _minimal_paths(PurePath(p) for p in rw_paths)
        everything = [PurePath(str(python)), PurePath(str(config)), PurePath(str(working_dir)),
                      *paths, *(PurePath(p) for p in used_paths)]
        lines.append("ProtectSystem=full")
        if supervises_in_home:
            lines.append("# ProtectHome left out: a process Guardian runs lives in a home "
                         "directory and writes there.")
        else:
            lines.append("ProtectHome=read-only")
        if any(_under(p, TMP_DIRS) for p in everything):
            lines.append("# PrivateTmp left out: Guardian's config uses paths under /tmp.")
        else:
            lines.append("PrivateTmp=yes")
        if paths:
            # "-": a directory that does not exist yet must not stop the unit from starting.
            lines.append("ReadWritePaths=" + " ".join("-" + _systemd_quote(str(p)) for p in paths))
    lines += [
        "",
        "[Install]",
        f"WantedBy={'default.target' if user else 'multi-user.target'}",
        "",
    ]
    return "\n".join(lines)


def unit_file_name(service_name: str) -> str:
    return validate_service_name(service_name).lower() + ".service"


def systemd_unit_path(service_name: str, *, user: bool) -> Path:
    name = unit_file_name(service_name)
    if not user:
        return Path("/etc/systemd/system") / name
    xdg = os.environ.get("XDG_CONFIG_HOME")
    base = Path(xdg) if xdg else Path.home() / ".config"
    return base / "systemd" / "user" / name


def systemd_enable_steps(service_name: str, *, user: bool) -> list[list[str]]:
    ctl = ["systemctl", "--user"] if user else ["systemctl"]
    unit = unit_file_name(service_name)
    return [[*ctl, "daemon-reload"], [*ctl, "enable", "--now", unit]]


def systemd_disable_steps(service_name: str, *, user: bool) -> list[list[str]]:
    ctl = ["systemctl", "--user"] if user else ["systemctl"]
    unit = unit_file_name(service_name)
    path = systemd_unit_path(service_name, user=user)
    return [[*ctl, "disable", "--now", unit], ["rm", "-f", str(path)], [*ctl, "daemon-reload"]]


def used_paths(cfg: Config) -> list[Path]:
    """Every path the config names that Guardian or its processes read (for the sandbox)."""
    paths: list[Path] = []
    for target in cfg.targets:
        svc = target.service
        if svc is not None and svc.resolved_backend == "process":
            paths += [Path(a) for a in (svc.command or [])[:1] if os.path.isabs(a)]
            if svc.cwd is not None:
                paths.append(svc.cwd)
        for check in target.checks:
            paths += [Path(p) for p in getattr(check, "paths", None) or []]
    return [p.absolute() for p in paths]


def supervises_in_home(cfg: Config) -> bool:
    """A ``process`` target whose program or cwd is in a home directory."""
    for target in cfg.targets:
        svc = target.service
        if svc is None or svc.resolved_backend != "process":
            continue
        where = [Path(a) for a in (svc.command or [])[:1] if os.path.isabs(a)]
        where += [svc.cwd] if svc.cwd is not None else []
        if any(homes.home_of(PurePath(p.absolute())) is not None
               or _under(PurePath(p.absolute()), HOME_DIRS) for p in where):
            return True
    return False


def service_dir_env(cfg: Config) -> dict[str, str]:
    """Pin Guardian's directories for a unit that runs it as a non-root account.

    The defaults depend on who runs Guardian (root: /var/lib/guardian; anyone else: their
    ~/.local/state): the unit must hand the account the same paths it made writable.
    """
    g = cfg.guardian
    return {"GUARDIAN_LOG_DIR": str(g.log_dir.absolute()),
            "GUARDIAN_STATE_DIR": str(g.state_dir.absolute()),
            "GUARDIAN_REPORT_DIR": str(g.report_dir.absolute())}


def polkit_rule(account: str, units: Iterable[str]) -> str:
    """A polkit rule letting ``account`` start/stop/restart exactly ``units`` (no sudo)."""
    names = sorted({u if u.endswith(".service") else f"{u}.service" for u in units})
    quoted = ", ".join(f'"{n}"' for n in names)
    return "\n".join([
        "// Generated by `guardian install-service`: lets Guardian manage these units only.",
        "polkit.addRule(function(action, subject) {",
        '    if (action.id == "org.freedesktop.systemd1.manage-units" &&',
        f'        subject.user == "{account}" &&',
        f"        [{quoted}].indexOf(action.lookup(\"unit\")) >= 0) {{",
        "        return polkit.Result.YES;",
        "    }",
        "});",
        "",
    ])


def writable_paths(cfg: Config) -> list[Path]:
    """Where Guardian (and processes it runs) must write, for ReadWritePaths=."""
    paths = [cfg.guardian.log_dir, cfg.guardian.state_dir, cfg.guardian.report_dir]
    paths.append(cfg.store_path.parent)
    for target in cfg.targets:
        svc = target.service
        if svc is not None and svc.resolved_backend == "process":
            if svc.cwd is not None:
                paths.append(svc.cwd)
            if svc.log_file is not None:
                paths.append(svc.log_file.parent)
    return [p.absolute() for p in paths]


# --------------------------------------------------------------------------- CLI

ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="Guardian's config file (default: as for `run`)"),
]
NameOpt = Annotated[str, typer.Option("--name", help="service name (systemd: lower-cased unit)")]
PrintOpt = Annotated[
    bool, typer.Option("--print", help="print the exact commands/unit, change nothing")
]
UserOpt = Annotated[bool, typer.Option("--user", help="systemd: a user unit (systemctl --user)")]
NssmOpt = Annotated[
    Path | None, typer.Option("--nssm", help="path to nssm.exe (default: found on PATH)")
]


def _load(config: Path | None) -> tuple[Config, Path]:
    from guardian.config.load import resolve_config_path

    path = resolve_config_path(config)
    if path is None:
        raise InstallError("a service needs a config file: pass --config (or set $GUARDIAN_CONFIG)")
    try:
        cfg = load_config(path)
    except ConfigError as e:
        raise BadConfig(e.render()) from None
    return cfg, path.absolute()


def _parse_env(pairs: list[str] | None) -> dict[str, str]:
    env: dict[str, str] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep:
            raise InstallError(f"--env expects KEY=VALUE, got {pair!r}")
        env[key] = value
    return env


def leaves_children(cfg: Config) -> bool:
    """A process target that outlives Guardian (``on_guardian_stop = "leave"``)."""
    return any(t.service is not None and t.service.resolved_backend == "process"
               and t.service.on_guardian_stop == "leave" for t in cfg.targets)


def _setup_steps(cfg: Config, *, account: str, group: str | None, home_owner: str | None,
                 reach: list[PurePath], read: list[PurePath]) -> list[str]:
    """The once-as-root steps for a non-root account; never a chown inside a home."""
    lines = [f"# Guardian runs as {account!r}; once, as root:"]
    if account != home_owner:
        lines.append(f"id -u {account} >/dev/null 2>&1 || useradd --system --user-group "
                     f"--home-dir /var/lib/guardian --shell /usr/sbin/nologin {account}")
    grp = group or account
    dirs = _minimal_paths(writable_paths(cfg))
    system = [str(p) for p in dirs if homes.home_of(p) is None]
    in_home = [p for p in dirs if homes.home_of(p) is not None]
    if system:
        lines.append(f"install -d -o {account} -g {grp} -m 0750 " + " ".join(system))
    for home in homes.homes(in_home):
        owner = homes.owner_name(home) or home.name
        mine = [str(p) for p in in_home if homes.home_of(p) == home]
        lines.append(f"# in {home}: created by its owner, never chowned")
        lines.append(f"runuser -u {owner} -- mkdir -p " + " ".join(mine))
    grants = homes.acl_grants(account, traverse_to=[p for p in reach if p not in read],
                              readable=read, writable=in_home)
    if account != home_owner and grants:
        lines.append(f"# {account!r} needs these grants to reach the files in a home directory"
                     " (or pass --account <that user>):")
        lines += [" ".join(step) for step in grants]
    return lines


def install_service(
    *,
    config: Path | None,
    name: str,
    print_only: bool,
    user: bool,
    nssm: Path | None,
    python: Path | None,
    env: Mapping[str, str],
    object_name: str | None,
    account: str | None = None,
    group: str | None = None,
    object_password: str | None = None,
    shell: str = "powershell",
) -> None:
    """Install (or print) the service; see the module docstring for the choices made."""
    validate_service_name(name)
    if shell not in ("powershell", "cmd"):
        raise InstallError(f"--shell must be powershell or cmd (got {shell!r})")
    cfg, config_path = _load(config)
    py = python or Path(sys.executable)  # not resolved: a venv's python is a symlink
    _check_env(env)  # before redaction, so a bad value is refused even when printing
    if print_only:
        env = redact_env(env)  # what is shown is the plan, with its secrets hidden
    if is_windows():
        install_windows(cfg, config_path, name=name, print_only=print_only, nssm=nssm,
                        python=py, env=env, object_name=object_name,
                        object_password=object_password, shell=shell,
                        leaves_children=leaves_children(cfg))
        return
    reach = [PurePath(py.absolute()), *(PurePath(p) for p in used_paths(cfg))]
    read = [PurePath(config_path)]
    found = homes.homes([*reach, *read])
    home_owner = homes.owner_name(found[0]) if len(found) == 1 else None
    if account is None:
        account = home_owner or DEFAULT_ACCOUNT
        if home_owner and not user:
            typer.echo(f"# {found[0]} holds Guardian's files: the service runs as its owner "
                       f"{home_owner!r} (--account guardian for a system user, with the "
                       "grants printed below)")
    as_root = user or account == "root"
    unit = systemd_unit(
        python=py,
        config=config_path,
        working_dir=config_path.parent,
        rw_paths=writable_paths(cfg),
        user=user,
        env=env if as_root else {**service_dir_env(cfg), **env},
        account=None if user else account,
        group=None if user else group,
        used_paths=used_paths(cfg),
        supervises_in_home=supervises_in_home(cfg),
        leaves_children=leaves_children(cfg),
    )
    unit_path = systemd_unit_path(name, user=user)
    steps = systemd_enable_steps(name, user=user)
    if print_only:
        typer.echo(f"# {unit_path}")
        typer.echo(unit)
    else:
        unit_path.parent.mkdir(parents=True, exist_ok=True)
        if any(is_secret_name(key) for key in env):
            write_private_text(unit_path, unit)  # Environment= carries a secret: 0600
        else:
            unit_path.write_text(unit, encoding="utf-8")
        typer.echo(f"wrote {unit_path}")
    if not as_root:
        for line in _setup_steps(cfg, account=account, group=group, home_owner=home_owner,
                                 reach=reach, read=read):
            typer.echo(line)
        units = [t.service.name for t in cfg.targets if t.service is not None
                 and t.service.resolved_backend == "systemd" and t.service.name]
        if units:
            typer.echo("# and let it restart its units without sudo (NoNewPrivileges blocks "
                       "sudo): /etc/polkit-1/rules.d/50-guardian.rules")
            typer.echo(polkit_rule(account, units))
        # An account that does not exist yet (useradd above) is judged as "others".
        who = homes.Account.lookup(account)
        for warning in homes.access_warnings(who, traverse_to=reach, readable=read):
            typer.echo(f"warning: {warning}", err=True)
    typer.echo("# then run:")
    typer.echo(" && ".join(" ".join(step) for step in steps))
    if user:
        typer.echo("# to keep it running while you are logged out: loginctl enable-linger")


def uninstall_service(*, name: str, print_only: bool, user: bool, nssm: Path | None,
                      shell: str = "powershell") -> None:
    from guardian.cli import pwsh

    validate_service_name(name)
    if shell not in ("powershell", "cmd"):
        raise InstallError(f"--shell must be powershell or cmd (got {shell!r})")
    if is_windows():
        tool = _nssm_path(nssm, print_only)
        plan = windows_uninstall_plan(nssm=tool, service_name=name)
        if print_only:  # as install's: PowerShell that pastes, cmd.exe on request
            lines = (pwsh.script(plan, may_fail={0}) if shell == "powershell"
                     else pwsh.cmd_lines(plan))
            for line in lines:
                typer.echo(line)
            return
        asyncio.run(run_plan(plan, may_fail={0}))  # stopping a stopped service "fails"
        typer.echo(f"removed service {name!r}")
        return
    # Guardian never drives systemctl for its own unit: the steps are printed to run.
    typer.echo("# run:")
    for step in systemd_disable_steps(name, user=user):
        typer.echo(" ".join(step))


def _ask_password(account: str | None, given: str | None, print_only: bool) -> str | None:
    """Ask for a Windows account's password at a terminal, before anything is installed."""
    if (given or account is None or print_only or not is_windows()
            or needs_no_password(account) or not sys.stdin.isatty()):
        return given
    answer: str = typer.prompt(f"Password of {account}", hide_input=True)
    return answer


def _exit_for(e: Exception) -> int:
    """2 for an invalid config, 4 for another unusable input, 1 for a step that failed (the
    README's exit-code table)."""
    from guardian.cli.support import INVALID_CONFIG, Exit

    if isinstance(e, BadConfig):
        return INVALID_CONFIG
    return Exit.DEGRADED if isinstance(e, StepFailed | OSError) else Exit.USAGE


def register(app: typer.Typer) -> None:
    """Add ``install-service`` and ``uninstall-service`` to the CLI."""

    @app.command("install-service")
    def install_service_cmd(
        config: ConfigOpt = None,
        name: NameOpt = DEFAULT_NAME,
        print_only: PrintOpt = False,
        user: UserOpt = False,
        nssm: NssmOpt = None,
        python: Annotated[
            Path | None,
            typer.Option("--python", help="interpreter to run (default: this one)"),
        ] = None,
        env: Annotated[
            list[str] | None,
            typer.Option("--env", help="KEY=VALUE for the service's environment (repeatable)"),
        ] = None,
        object_name: Annotated[
            str | None,
            typer.Option("--object-name", help="Windows: account to run as (default LocalSystem)"),
        ] = None,
        account: Annotated[
            str | None,
            typer.Option("--account", help="systemd system unit: User= to run as (default: "
                         "the owner of the home directory holding Guardian's files, else "
                         "'guardian', a system user; 'root' for none)"),
        ] = None,
        object_password: Annotated[
            str | None,
            typer.Option("--object-password", envvar="GUARDIAN_OBJECT_PASSWORD",
                         help="Windows: password of --object-name (asked for at a terminal "
                         "when needed; --print: the printed script asks)"),
        ] = None,
        shell: Annotated[
            str, typer.Option("--shell", help="Windows --print: powershell (default) or cmd")
        ] = "powershell",
        group: Annotated[
            str | None, typer.Option("--group", help="systemd: Group= (default: the account)")
        ] = None,
    ) -> None:
        """Install Guardian as a service (NSSM on Windows, a systemd unit on Linux)."""
        try:
            install_service(
                config=config,
                name=name,
                print_only=print_only,
                user=user,
                nssm=nssm,
                python=python,
                env=_parse_env(env),
                object_name=object_name,
                account=account,
                group=group,
                object_password=_ask_password(object_name, object_password, print_only),
                shell=shell,
            )
        except (InstallError, ValueError, OSError) as e:
            typer.echo(f"install-service: {e}", err=True)
            raise typer.Exit(_exit_for(e)) from None

    @app.command("uninstall-service")
    def uninstall_service_cmd(
        name: NameOpt = DEFAULT_NAME,
        print_only: PrintOpt = False,
        user: UserOpt = False,
        nssm: NssmOpt = None,
        shell: Annotated[
            str, typer.Option("--shell", help="Windows --print: powershell (default) or cmd")
        ] = "powershell",
    ) -> None:
        """Stop and remove the Guardian service (Linux: print the steps)."""
        try:
            uninstall_service(name=name, print_only=print_only, user=user, nssm=nssm,
                              shell=shell)
        except (InstallError, ValueError, OSError) as e:
            typer.echo(f"uninstall-service: {e}", err=True)
            raise typer.Exit(_exit_for(e)) from None
