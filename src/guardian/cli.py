"""The ``guardian`` command line (typer + rich).

User errors (bad config, unknown target) print a clear message and exit non-zero; a
Python traceback here is a bug.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from guardian import __version__
from guardian.cli_support import (
    ConfigOpt,
    defaults_note,
    err,
    load_or_exit,
    loaded_config_path,
    out,
    say_if_defaults,
    token_hint,
)
from guardian.config import Config, config_summary, redacted_config
from guardian.escape import terminal
from guardian.log import LogFormat, setup_logging
from guardian.result import CheckResult, Status
from guardian.state import aggregate

app = typer.Typer(
    name="guardian",
    help="Self-healing watchdog for local AI-generation stacks (ComfyUI + web panel).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
config_app = typer.Typer(help="Inspect and validate configuration.", no_args_is_help=True)
app.add_typer(config_app, name="config")

EXIT_FOR = {"healthy": 0, "degraded": 1, "unhealthy": 2}


# --------------------------------------------------------------------------- version


@app.command()
def version() -> None:
    """Print Guardian's version."""
    out.print(f"guardian {__version__} (Python {sys.version.split()[0]}, {sys.platform})")


# --------------------------------------------------------------------------- config


@config_app.command("validate")
def config_validate(
    file: Annotated[Path | None, typer.Argument(help="config file (default: as for run)")] = None,
    config: ConfigOpt = None,
) -> None:
    """Validate a config: exit 0 with a summary, or list every problem and exit 2."""
    cfg = load_or_exit(file or config)
    source = loaded_config_path() or defaults_note()
    out.print(f"ok: {source}: {config_summary(cfg)}", markup=False, highlight=False)


@config_app.command("show")
def config_show(config: ConfigOpt = None) -> None:
    """Print the effective config (defaults filled in, secrets hidden) as JSON."""
    cfg = load_or_exit(config)
    out.print_json(json.dumps(redacted_config(cfg)))


@config_app.command("reference")
def config_reference() -> None:
    """Print the configuration reference (Markdown) generated from the validator."""
    from guardian.reference import render

    print(render())


# --------------------------------------------------------------------------- run


def _install_signal_handlers(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
    def request_stop(*_: Any) -> None:
        loop.call_soon_threadsafe(stop.set)

    if sys.platform == "win32":
        # Ctrl-C and Ctrl-Break (what NSSM sends first) both end Guardian cleanly.
        signal.signal(signal.SIGINT, request_stop)
        signal.signal(signal.SIGBREAK, request_stop)  # type: ignore[attr-defined,unused-ignore]
    else:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, request_stop)


@app.command()
def run(
    config: ConfigOpt = None,
    log_format: Annotated[
        str, typer.Option("--log-format", help="console log format: json|pretty|auto")
    ] = "auto",
    log_level: Annotated[str | None, typer.Option("--log-level", help="override log level")] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="decide and log recovery actions, run none")
    ] = False,
) -> None:
    """Run Guardian in the foreground until SIGINT/SIGTERM."""
    cfg = load_or_exit(config)
    say_if_defaults()
    if dry_run:
        cfg = cfg.model_copy(update={"guardian": cfg.guardian.model_copy(update={"dry_run": True})})
    raise typer.Exit(run_guardian(cfg, log_format, log_level))


def run_guardian(cfg: Config, log_format: str = "auto", log_level: str | None = None) -> int:
    """Set up logging, run until a stop signal, return the exit code."""
    if log_format not in ("json", "pretty", "auto"):
        err.print(f"--log-format must be json, pretty or auto (got {log_format!r})")
        return 2
    fmt: LogFormat = log_format  # type: ignore[assignment]
    g = cfg.guardian
    logs = setup_logging(
        g.log_dir, log_level or g.log_level, fmt, max_bytes=g.log_max_bytes, backups=g.log_backups
    )
    from guardian.runtime import Guardian

    async def main() -> None:
        stop = asyncio.Event()
        _install_signal_handlers(asyncio.get_running_loop(), stop)
        guardian = Guardian(cfg)
        await guardian.run(stop)

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
    finally:
        logs.flush()
    return 0


# --------------------------------------------------------------------------- check


def results_table(results: list[CheckResult], title: str) -> Table:
    style = {
        Status.OK: "green",
        Status.DEGRADED: "yellow",
        Status.FAILED: "red",
        Status.SKIPPED: "dim",
    }
    table = Table(title=title, title_justify="left")
    table.add_column("target")
    table.add_column("check")
    table.add_column("status")
    table.add_column("time", justify="right")
    table.add_column("reason / values", overflow="fold")
    for r in results:
        detail = r.reason or ", ".join(f"{k}={v}" for k, v in list(r.values.items())[:6])
        table.add_row(
            terminal(r.target),
            terminal(r.check),
            f"[{style[r.status]}]{r.status.value}[/]",
            f"{r.duration * 1000:.0f} ms",
            terminal(detail),  # target text: "[/]" in a health body is not markup
        )
    return table


@app.command()
def check(
    config: ConfigOpt = None,
    target: Annotated[str | None, typer.Option("--target", "-t", help="only this target")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of a table")] = False,
) -> None:
    """Run every check once and exit 0 healthy / 1 degraded / 2 unhealthy."""
    cfg = load_or_exit(config)
    say_if_defaults()
    if target is not None and target not in {t.name for t in cfg.targets}:
        err.print(f"unknown target {target!r}")
        raise typer.Exit(2)
    setup_logging(None, "error", "pretty" if err.is_terminal else "json")
    from guardian.runtime import Guardian

    results = asyncio.run(Guardian(cfg).check_once(target))
    health = aggregate(results, {t.name: t.critical for t in cfg.targets})
    if as_json:
        print(json.dumps({"status": health, "results": [r.to_dict() for r in results]}, indent=2))
    else:
        out.print(results_table(results, f"Guardian check: {health}"))
    raise typer.Exit(EXIT_FOR[health])


# --------------------------------------------------------------------------- client


def _api_call(cfg: Config, method: str, path: str, ok: tuple[int, ...] = ()) -> Any:
    """Call the running Guardian's API; print a clear error and exit 2 when it fails."""
    import httpx

    host = "127.0.0.1" if cfg.api.host in ("0.0.0.0", "::", "") else cfg.api.host
    url = f"http://{host}:{cfg.api.port}{path}"
    headers = {}
    if cfg.api.token is not None and cfg.api.token.get_secret_value():
        headers["Authorization"] = f"Bearer {cfg.api.token.get_secret_value()}"
    try:
        resp = httpx.request(method, url, headers=headers, timeout=30)
    except httpx.HTTPError as e:
        err.print(f"cannot reach Guardian at {url}: {e}. Is `guardian run` running?")
        raise typer.Exit(2) from None
    if resp.status_code >= 400 and resp.status_code not in ok:
        try:
            detail = resp.json().get("detail", resp.text)
        except ValueError:
            detail = resp.text
        err.print(f"Guardian answered HTTP {resp.status_code}: {detail}", markup=False)
        if resp.status_code in (401, 403):
            err.print(token_hint(cfg), markup=False, highlight=False)
        raise typer.Exit(2)
    return resp.json()


@app.command()
def restart(
    target: Annotated[str, typer.Argument(help="target whose service to restart")],
    config: ConfigOpt = None,
) -> None:
    """Ask the running Guardian to restart a target now (resets its circuit breaker)."""
    cfg = load_or_exit(config)
    if target not in {t.name for t in cfg.targets}:
        err.print(f"unknown target {target!r}")
        raise typer.Exit(2)
    body = _api_call(cfg, "POST", f"/api/targets/{target}/restart")
    out.print(body.get("message", body) if isinstance(body, dict) else body, markup=False)


@app.command()
def status(config: ConfigOpt = None) -> None:
    """Show the running Guardian's view of the stack; exit 0/1/2 like `check`."""
    cfg = load_or_exit(config)
    body = _api_call(cfg, "GET", "/api/health", ok=(503,))  # 503 = unhealthy, still a view
    health = body.get("status", "unhealthy")
    table = Table(title=f"Guardian: {terminal(health)}", title_justify="left")
    for col in ("target", "status", "reason"):
        table.add_column(col)
    for name, info in (body.get("targets") or {}).items():
        table.add_row(
            terminal(name), terminal(info.get("status")), terminal(info.get("reason") or "")
        )
    out.print(table)
    raise typer.Exit(EXIT_FOR.get(health, 2))


# --------------------------------------------------------------------------- demo


@app.command()
def demo(
    directory: Annotated[
        Path | None, typer.Option("--dir", help="where the demo writes config, logs, state")
    ] = None,
    api_port: Annotated[
        int, typer.Option("--api-port", help="Guardian API port (0: any free)")
    ] = 8787,
    log_format: Annotated[str, typer.Option("--log-format")] = "auto",
) -> None:
    """Start a simulated ComfyUI + panel under Guardian's supervision and watch them."""
    from guardian.demo.stack import demo_banner, prepare_demo

    demo_cfg, config_path = prepare_demo(directory, api_port=api_port)
    err.print(demo_banner(demo_cfg, config_path), highlight=False)
    raise typer.Exit(run_guardian(demo_cfg, log_format))


def _register_extensions() -> None:
    """Commands that live next to the code they drive."""
    from guardian import install
    from guardian.incidents import commands as incident_commands

    install.register(app)
    incident_commands.register(app)


_register_extensions()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
