"""What every CLI command module shares: consoles, the --config option, config loading."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from guardian.config import Config, ConfigError, load_config

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config", "-c", help="TOML config (default: $GUARDIAN_CONFIG or ./guardian.toml)"
    ),
]


def load_or_exit(path: Path | None) -> Config:
    """Load the config or print every problem and exit 2 (never a traceback)."""
    try:
        return load_config(path)
    except ConfigError as e:
        err.print(e.render(), markup=False, highlight=False)
        raise typer.Exit(2) from None
