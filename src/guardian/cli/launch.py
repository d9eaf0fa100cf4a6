"""The ``guardian`` entry point: ``run`` starts without the terminal libraries.

typer, click and rich cost ~10 MiB and ~100 ms that a long-running ``guardian run`` never
uses. The command line has one definition, in :mod:`guardian.cli.main`; this module only
recognises the plain form of ``run`` (the options in :data:`RUN_OPTIONS`, each once, with
a valid config file) and starts Guardian directly. Anything else (``--help``, an unknown
or repeated option, a bad value, a config with problems, no config file at all) goes to
typer, which prints exactly what it always printed. ``tests/cli`` checks the table
against typer's definition of ``run``.
"""

from __future__ import annotations

import sys
from pathlib import Path

# option -> (parameter of ``guardian.cli.main.run``, takes a value)
RUN_OPTIONS: dict[str, tuple[str, bool]] = {
    "--config": ("config", True),
    "-c": ("config", True),
    "--log-format": ("log_format", True),
    "--log-level": ("log_level", True),
    "--dry-run": ("dry_run", False),
    "--api-port": ("api_port", True),
}


def parse_run(args: list[str]) -> dict[str, str | bool] | None:
    """The options of ``guardian <args>`` when it is a plain ``run``; None: typer decides."""
    if not args or args[0] != "run":
        return None
    values: dict[str, str | bool] = {}
    rest = iter(args[1:])
    for arg in rest:
        name, eq, inline = arg.partition("=") if arg.startswith("--") else (arg, "", "")
        spec = RUN_OPTIONS.get(name)
        if spec is None:
            return None
        param, takes_value = spec
        if param in values:
            return None
        if not takes_value:
            if eq:
                return None
            values[param] = True
            continue
        value = inline if eq else next(rest, None)
        if not value or value.startswith("-"):
            return None
        values[param] = value
    return values


def fast_run(opts: dict[str, str | bool]) -> int | None:
    """Run Guardian for parsed ``run`` options; None when typer must handle the call."""
    from guardian.cli.foreground import LOG_FORMATS, run_foreground, with_api_port, with_dry_run
    from guardian.config.errors import ConfigError
    from guardian.config.load import load_config, resolve_config_path

    log_format = next((f for f in LOG_FORMATS if f == opts.get("log_format", "auto")), None)
    if log_format is None:  # typer's path says what is wrong
        return None
    port_text = opts.get("api_port")
    port = None
    if isinstance(port_text, str):
        if not port_text.isdigit() or int(port_text) > 65535:
            return None  # typer's path says what is wrong
        port = int(port_text)
    explicit = opts.get("config")
    config = Path(explicit) if isinstance(explicit, str) else None
    path = resolve_config_path(config)
    if path is None:  # built-in defaults: typer's path says so
        return None
    try:
        cfg = load_config(config)
    except ConfigError:  # typer's path lists every problem
        return None
    log_level = opts.get("log_level")
    return run_foreground(
        with_api_port(with_dry_run(cfg, opts.get("dry_run") is True), port),
        log_format,
        log_level if isinstance(log_level, str) else None,
        path,
    )


def main() -> None:
    opts = parse_run(sys.argv[1:])
    if opts is not None:
        code = fast_run(opts)
        if code is not None:
            sys.exit(code)
    from guardian.cli.main import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()
