"""What every CLI command module shares: consoles, the --config option, config loading."""

from __future__ import annotations

import os
from enum import IntEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from guardian.config.errors import ConfigError
from guardian.config.load import CONFIG_ENV, DEFAULT_CONFIG_FILE, load_config, resolve_config_path
from guardian.config.schema import Config


class Exit(IntEnum):
    """Guardian's exit codes, one meaning each (the README's table is made from these).

    ``check`` and ``status`` answer with 0/1/2 about the stack; every other failure has a
    code of its own, so a script never reads "cannot reach Guardian" as "unhealthy".
    """

    OK = 0  # healthy; the command did what was asked
    DEGRADED = 1  # check/status: degraded; other commands: failed (no store, send failed)
    UNHEALTHY = 2  # check/status: a critical target failed
    UNREACHABLE = 3  # no running Guardian answered: not running, no API, refused, HTTP error
    USAGE = 4  # bad option, unknown target or one without a service, several Guardians
    CANNOT_START = 5  # run: the API port is taken, the store held, a directory untrusted


# An invalid config exits 2 before anything starts, whatever the command (the project's rule
# since the first release; `check`/`status` cannot judge a stack they cannot read either).
INVALID_CONFIG = Exit.UNHEALTHY


EXIT_MEANINGS: list[tuple[Exit, str]] = [
    (Exit.OK, "healthy (`check`, `status`); otherwise the command did what was asked"),
    (Exit.DEGRADED, "degraded (`check`, `status`); for other commands: it failed (no "
                    "incident store, a notification not sent)"),
    (Exit.UNHEALTHY, "unhealthy: a critical target failed (`check`, `status`); for every "
                     "command: an invalid or unreadable config (each problem with its key path"
                     " and line), before anything starts"),
    (Exit.UNREACHABLE, "cannot reach Guardian: none running for this config, it has no API, "
                       "the connection failed or it answered with an HTTP error (401: token)"),
    (Exit.USAGE, "usage or ambiguity: a bad option, an unknown target or one without a "
                 "service, several Guardians running (choose with --config)"),
    (Exit.CANNOT_START, "`run`/`demo` could not start: the API port is taken, another Guardian "
                        "holds the store, or a directory is not Guardian's to trust"),
]


def exit_table() -> str:
    """The README's exit-code table (a test keeps the two the same)."""
    rows = ["| Code | Meaning |", "|---|---|"]
    rows += [f"| {int(code)} | {meaning} |" for code, meaning in EXIT_MEANINGS]
    return "\n".join(rows)


out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

TOKEN_ENV = "GUARDIAN_API_TOKEN"

ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config", "-c", help="TOML config (default: $GUARDIAN_CONFIG or ./guardian.toml)"
    ),
]


class _Loaded:
    """Where the last :func:`load_or_exit` read its config (None: built-in defaults)."""

    path: Path | None = None


def load_or_exit(path: Path | None) -> Config:
    """Load the config or print every problem and exit with :data:`INVALID_CONFIG`."""
    _Loaded.path = resolve_config_path(path)
    try:
        return load_config(path)
    except ConfigError as e:
        err.print(e.render(), markup=False, highlight=False)
        raise typer.Exit(INVALID_CONFIG) from None


def loaded_config_path() -> Path | None:
    """The file the command's config came from; None when it runs on built-in defaults."""
    return _Loaded.path


def defaults_note() -> str:
    """Said when no file was found, so nobody mistakes the defaults for their config."""
    local = Path.cwd() / DEFAULT_CONFIG_FILE
    return (
        f"using built-in defaults (no config file: looked for --config, "
        f"${CONFIG_ENV} (unset), {local} (not found))"
    )


def say_if_defaults() -> None:
    if _Loaded.path is None:
        err.print(defaults_note(), markup=False, highlight=False)


def token_hint(cfg: Config) -> str:
    """Where the token a 401/403 was answered to comes from, and where to fix it."""
    where = f"[api] token in {_Loaded.path}" if _Loaded.path else "[api] token in the config"
    if os.environ.get(TOKEN_ENV):
        sent = f"the token sent comes from ${TOKEN_ENV} (it overrides {where})"
    elif cfg.api.token is not None and cfg.api.token.get_secret_value():
        sent = f"the token sent is {where}"
    else:
        sent = f"no token was sent: set {where} or ${TOKEN_ENV}"
    return f"{sent}; it must be the token of the Guardian that is running."
