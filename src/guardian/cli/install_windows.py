"""The Windows half of ``install-service``: the NSSM plan, run or printed.

Built as argv lists first so ``--print`` shows exactly what would run (as PowerShell by
default, see :mod:`guardian.cli.pwsh`) and tests check the exact commands. Guardian
keeps its power to restart other services: the service runs as LocalSystem unless told
otherwise, and an account that needs a password is refused without one before anything
is installed (a service that cannot log on fails only when it starts).
"""

from __future__ import annotations

import asyncio
import re
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path, PurePath

import typer

from guardian.config.schema import Config
from guardian.services.base import validate_service_name
from guardian.services.subproc import CommandResult, run_command
from guardian.services.windows.backend import find_tool
from guardian.support.redact import redact_argv

DISPLAY_NAME = "Guardian watchdog"
DESCRIPTION = "Self-healing watchdog for the local AI-generation stack (ComfyUI + panel)"
SERVICE_LOG = "guardian-service.log"  # NSSM's capture of Guardian's stdout/stderr
ROTATE_BYTES = 10 * 1024 * 1024
RESTART_DELAY_MS = 5000
# NSSM sends Ctrl+C first and waits this long before harder methods: enough for
# Guardian's own shutdown (guardian.shutdown_grace, 5 s by default) to finish.
STOP_CONSOLE_MS = 15000
DEFAULT_ENV = {"PYTHONUNBUFFERED": "1", "PYTHONUTF8": "1"}
NSSM_TIMEOUT = 60.0

_ENV_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class InstallError(Exception):
    """An input is unusable (a usage error); the message says which and why."""


class BadConfig(InstallError):
    """The config file is invalid: exits 2 like every command's invalid config."""


class StepFailed(InstallError):
    """A command of the plan failed or could not run."""


def _check_env(env: Mapping[str, str]) -> None:
    for key, value in env.items():
        if not _ENV_KEY_RE.fullmatch(key):
            raise InstallError(f"invalid environment variable name {key!r}")
        if any(c in value for c in "\r\n\x00"):
            raise InstallError(f"environment value of {key} contains a newline or NUL")


# --------------------------------------------------------------------------- Windows


def windows_install_plan(
    *,
    nssm: str,
    service_name: str,
    python: str | PurePath,
    config: str | PurePath,
    app_dir: str | PurePath,
    log_file: str | PurePath,
    display_name: str = DISPLAY_NAME,
    description: str = DESCRIPTION,
    env: Mapping[str, str] | None = None,
    object_name: str | None = None,
    object_password: str | None = None,
    leaves_children: bool = False,
) -> list[list[str]]:
    """The nssm commands that install Guardian as an auto-start, self-restarting service.

    The app's arguments go in one ``AppParameters`` value, quoted for the Windows command
    line: ``nssm install <svc> <app> <args...>`` joins its arguments with bare spaces,
    which breaks a config path such as ``C:\\Program Files\\...``.
    ``leaves_children``: a target has ``on_guardian_stop = "leave"``, so NSSM must not
    kill Guardian's process tree when it stops or restarts Guardian
    (``AppKillProcessTree 0``); Guardian still stops the other ones itself.
    """
    svc = validate_service_name(service_name)
    environment = {**DEFAULT_ENV, **(env or {})}
    _check_env(environment)
    for text in (display_name, description, object_name or ""):
        if any(c in text for c in "\r\n\x00"):
            raise InstallError(f"{text!r} contains a newline or NUL")
    params = subprocess.list2cmdline(["-m", "guardian", "run", "--config", str(config)])
    log = str(log_file)

    def nset(*args: str) -> list[str]:
        return [nssm, "set", svc, *args]

    plan = [
        [nssm, "install", svc, str(python)],
        nset("AppParameters", params),
        nset("AppDirectory", str(app_dir)),
        nset("DisplayName", display_name),
        nset("Description", description),
        nset("Start", "SERVICE_AUTO_START"),
        nset("AppStdout", log),
        nset("AppStderr", log),
        nset("AppRotateFiles", "1"),
        nset("AppRotateOnline", "1"),
        nset("AppRotateBytes", str(ROTATE_BYTES)),
        nset("AppExit", "Default", "Restart"),
        nset("AppRestartDelay", str(RESTART_DELAY_MS)),
        nset("AppStopMethodConsole", str(STOP_CONSOLE_MS)),
        nset("AppEnvironmentExtra", *(f"{k}={v}" for k, v in environment.items())),
    ]
    if leaves_children:
        plan.append(nset("AppKillProcessTree", "0"))
    if object_name:
        if not object_password and not needs_no_password(object_name):
            raise InstallError(
                f"the account {object_name!r} needs its password to run a service: pass "
                "--object-password (asked for when omitted at a terminal), or use a built-in "
                "account (LocalSystem, 'NT AUTHORITY\\LocalService', 'NT SERVICE\\<name>') "
                "or a gMSA ending in '$'")
        password = [] if needs_no_password(object_name) else [object_password or ""]
        plan.append(nset("ObjectName", object_name, *password))
    return plan


BUILTIN_ACCOUNTS = {"localsystem", "nt authority\\system", "nt authority\\localservice",
                    "nt authority\\networkservice", ".\\localsystem"}


def needs_no_password(account: str) -> bool:
    """Windows accounts that log on as a service without a password: the built-in ones,
    virtual accounts (``NT SERVICE\\name``) and group-managed service accounts (``x$``)."""
    low = account.strip().lower()
    return low in BUILTIN_ACCOUNTS or low.startswith("nt service\\") or low.endswith("$")


def without_password(argv: Sequence[str]) -> list[str]:
    """``nssm set <svc> ObjectName <account> <password>`` with the password hidden."""
    from guardian.cli.pwsh import PROMPTED_PASSWORD

    shown = list(argv)
    if (len(shown) >= 6 and shown[1] == "set" and shown[3] == "ObjectName"
            and shown[5] != PROMPTED_PASSWORD):
        shown[5] = "********"
    return shown


def windows_uninstall_plan(*, nssm: str, service_name: str) -> list[list[str]]:
    svc = validate_service_name(service_name)
    return [[nssm, "stop", svc], [nssm, "remove", svc, "confirm"]]


async def run_plan(
    plan: Sequence[Sequence[str]],
    *,
    timeout: float = NSSM_TIMEOUT,
    may_fail: Iterable[int] = (),
    echo: bool = True,
) -> list[CommandResult]:
    """Run each command in order; stop at the first failure not listed in ``may_fail``."""
    tolerated = set(may_fail)
    results: list[CommandResult] = []
    for i, argv in enumerate(plan):
        if echo:
            typer.echo(f"> {subprocess.list2cmdline(redact_argv(without_password(argv)))}")
        try:
            result = await run_command(list(argv), timeout=timeout)
        except TimeoutError:
            raise StepFailed(f"{argv[0]} {argv[1]} did not finish within {timeout:g}s") from None
        except OSError as e:
            raise StepFailed(f"cannot run {argv[0]}: {e.strerror or e}") from None
        results.append(result)
        if result.rc != 0 and i not in tolerated:
            words = (result.stderr.strip() or result.stdout.strip())[:500]
            raise StepFailed(f"`{' '.join(argv[1:3])}` failed (exit {result.rc}): {words}")
    return results


def _nssm_path(explicit: Path | None, printing: bool) -> str:
    if explicit is not None:
        return str(explicit)
    found = find_tool("nssm.exe", "nssm")
    if found:
        return found
    if printing:
        return "nssm.exe"
    raise StepFailed("nssm.exe not found on PATH: get it from https://nssm.cc or pass --nssm")


def install_windows(cfg: Config, config_path: Path, *, name: str, print_only: bool,
                     nssm: Path | None, python: Path, env: Mapping[str, str],
                     object_name: str | None, object_password: str | None,
                    shell: str, leaves_children: bool) -> None:
    from guardian.cli import pwsh

    tool = _nssm_path(nssm, print_only)
    log_file = cfg.guardian.log_dir.absolute() / SERVICE_LOG
    # A printed plan never holds a password: the PowerShell asks for it when pasted.
    prompted = (print_only and object_name is not None
                and not needs_no_password(object_name))
    plan = windows_install_plan(
        nssm=tool, service_name=name, python=python, config=config_path,
        app_dir=config_path.parent, log_file=log_file, env=env, object_name=object_name,
        object_password=pwsh.PROMPTED_PASSWORD if prompted else object_password,
        leaves_children=leaves_children,
    )
    if print_only:
        shown = [without_password(argv) for argv in plan]
        lines = (pwsh.script(shown, account=object_name if prompted else None)
                 if shell == "powershell" else pwsh.cmd_lines(shown))
        for line in lines:
            typer.echo(line)
        return
    log_file.parent.mkdir(parents=True, exist_ok=True)
    asyncio.run(run_plan(plan))
    typer.echo(f"installed service {name!r}; start it with: "
               + pwsh.command_line([tool, "start", name]))
