"""What every CLI command module shares: consoles, the --config option, config loading."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from guardian.config.errors import ConfigError
from guardian.config.load import CONFIG_ENV, DEFAULT_CONFIG_FILE, load_config, resolve_config_path
from guardian.config.schema import Config

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
    """Load the config or print every problem and exit 2 (never a traceback)."""
    _Loaded.path = resolve_config_path(path)
    try:
        return load_config(path)
    except ConfigError as e:
        err.print(e.render(), markup=False, highlight=False)
        raise typer.Exit(2) from None


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
