"""The ``guardian`` command line (typer + rich).

User errors (bad config, unknown target) print a clear message and exit non-zero; a
Python traceback here is a bug.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sys
from pathlib import Path
from typing import Annotated, Any

import click
import typer
from rich.table import Table
from rich.text import Text
from typer import _click as typer_click

from guardian import __version__
from guardian.checks.registry import spec
from guardian.cli.foreground import LOG_FORMATS, run_foreground, with_api_port, with_dry_run
from guardian.cli.locate import Located, api_call, locate_or_exit
from guardian.cli.support import (
    ConfigOpt,
    Exit,
    defaults_note,
    err,
    load_or_exit,
    loaded_config_path,
    out,
    say_if_defaults,
)
from guardian.config.load import config_summary, redacted_config, resolve_config_path
from guardian.config.schema import Config
from guardian.core.result import CheckResult, Status
from guardian.core.state import aggregate
from guardian.support.escape import inert, terminal
from guardian.support.log import setup_logging


def _hide_flag_types() -> None:
    """typer 0.29 prints ``<bool>`` beside every flag (``--help`` too); a flag takes no value."""
    from typer.core import TyperOption

    original = TyperOption.display_type_rich
    if getattr(original, "_guardian", False):
        return

    def display_type_rich(self: TyperOption, ctx: Any) -> str | None:
        return None if self.is_flag else original(self, ctx)

    display_type_rich._guardian = True  # type: ignore[attr-defined]
    TyperOption.display_type_rich = display_type_rich  # type: ignore[method-assign]


_hide_flag_types()

# A bad option or argument is a usage error with a code of its own (click's default, 2,
# is "unhealthy" for `check` and `status`). typer 0.29 carries its own copy of click.
typer_click.exceptions.UsageError.exit_code = Exit.USAGE
click.exceptions.UsageError.exit_code = Exit.USAGE

app = typer.Typer(
    name="guardian",
    help="Self-healing watchdog for local AI-generation stacks (ComfyUI + web panel).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
config_app = typer.Typer(help="Inspect and validate configuration.", no_args_is_help=True)
app.add_typer(config_app, name="config")

EXIT_FOR = {"healthy": Exit.OK, "degraded": Exit.DEGRADED, "unhealthy": Exit.UNHEALTHY}


# --------------------------------------------------------------------------- version


def version_text() -> str:
    return f"guardian {__version__} (Python {sys.version.split()[0]}, {sys.platform})"


@app.command()
def version() -> None:
    """Print Guardian's version."""
    out.print(version_text(), markup=False, highlight=False)


def _print_version(value: bool) -> None:
    if value:
        print(version_text())
        raise typer.Exit(Exit.OK)


@app.callback()
def _options(
    show_version: Annotated[
        bool, typer.Option("--version", "-V", is_eager=True, callback=_print_version,
                           help="print Guardian's version and exit")
    ] = False,
) -> None:
    """Self-healing watchdog for local AI-generation stacks (ComfyUI + web panel)."""


# --------------------------------------------------------------------------- config


@config_app.command("validate")
def config_validate(
    file: Annotated[Path | None, typer.Argument(help="config file (default: as for run)")] = None,
    config: ConfigOpt = None,
) -> None:
    """Validate a config: exit 0 with a summary (and warnings), or list every problem, exit 2.

    Warnings (another platform's backend or paths, deprecated keys) leave the exit code 0.
    """
    from guardian.cli.advice import config_warnings

    cfg = load_or_exit(file or config)
    source = loaded_config_path() or defaults_note()
    for warning in config_warnings(cfg):
        err.print(f"warning: {warning}", markup=False, highlight=False)
    out.print(f"ok: {source}: {config_summary(cfg)}", markup=False, highlight=False)


@config_app.command("show")
def config_show(config: ConfigOpt = None) -> None:
    """Print the effective config (defaults filled in, secrets hidden) as JSON."""
    cfg = load_or_exit(config)
    out.print_json(json.dumps(redacted_config(cfg)))


@config_app.command("reference")
def config_reference() -> None:
    """Print the configuration reference (Markdown) generated from the validator."""
    from guardian.config.reference import render

    print(render())


# --------------------------------------------------------------------------- run


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
    api_port: Annotated[
        int | None,
        typer.Option("--api-port", min=0, max=65535,
                     help="API port instead of the config's (0: any free port)"),
    ] = None,
) -> None:
    """Run Guardian in the foreground until SIGINT/SIGTERM.

    Exits 5 at once when the API port is taken (unless it is 0: any free port).
    """
    cfg = with_api_port(with_dry_run(load_or_exit(config), dry_run), api_port)
    say_if_defaults()
    raise typer.Exit(run_guardian(cfg, log_format, log_level, resolve_config_path(config)))


def run_guardian(
    cfg: Config,
    log_format: str = "auto",
    log_level: str | None = None,
    config_path: Path | None = None,
) -> int:
    """Run in the foreground (see :mod:`guardian.cli.foreground`); 4 for a bad --log-format."""
    fmt = next((f for f in LOG_FORMATS if f == log_format), None)
    if fmt is None:
        err.print(f"--log-format must be json, pretty or auto (got {log_format!r})")
        return Exit.USAGE
    return run_foreground(cfg, fmt, log_level, config_path)


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


SUPERVISED_REASON = (
    "supervised by the Guardian that runs it: cannot be judged from outside "
    "(see `guardian status` while `guardian run` runs)"
)


def judge_from_outside(cfg: Config, results: list[CheckResult]) -> list[CheckResult]:
    """A one-shot ``check`` runs no supervisor: a ``process`` target's service check would
    say "not started" about a process another Guardian runs. Say so instead of failing."""
    supervised = {
        t.name for t in cfg.targets
        if t.service is not None and t.service.resolved_backend == "process"
    }
    return [
        dataclasses.replace(r, status=Status.SKIPPED, reason=SUPERVISED_REASON)
        if r.target in supervised and spec(r.kind).service_state and r.status is not Status.OK
        else r
        for r in results
    ]


def _daemon_view(where: Located, target: str | None) -> dict[str, Any] | None:
    """The running Guardian's /api/status (one target's part with ``target``), else None."""
    from guardian.checks.http.httpxlib import httpx  # without httpx's own CLI

    if where.running is None or not where.running.api_url:
        return None
    try:
        resp = httpx.get(f"{where.running.api_url}/api/status", timeout=5)
        body = resp.json()
    except (httpx.HTTPError, ValueError):
        return None
    if resp.status_code != 200 or not isinstance(body, dict):
        return None
    if target is not None:
        body["targets"] = [t for t in body.get("targets") or [] if t.get("name") == target]
        chosen = body["targets"]
        # As the daemon judges the stack: a target still starting is degraded, not failed.
        failing = [t for t in chosen if t.get("status") == "failed" and not t.get("starting")]
        off = any(t.get("status") in ("failed", "degraded") or t.get("starting") for t in chosen)
        body["status"] = ("unhealthy" if any(t.get("critical", True) for t in failing) else
                          "degraded" if failing or off else "healthy")
    return body


@app.command()
def check(
    config: ConfigOpt = None,
    target: Annotated[str | None, typer.Option("--target", "-t", help="only this target")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of a table")] = False,
    local: Annotated[
        bool,
        typer.Option("--local", help="run the checks here even while a Guardian runs this config"),
    ] = False,
) -> None:
    """Run every check once and exit 0 healthy / 1 degraded / 2 unhealthy.

    While a Guardian runs this config, its view is shown: it knows what it supervises.

    --local runs the checks here instead.
    """
    where = locate_or_exit(config)
    cfg = where.config
    say_if_defaults()
    if target is not None and target not in {t.name for t in cfg.targets}:
        err.print(f"unknown target {target!r}", markup=False)
        raise typer.Exit(Exit.USAGE)
    daemon = None if local else _daemon_view(where, target)
    if daemon is not None and where.running is not None:
        health = daemon.get("status", "unhealthy")
        err.print(f"the view of the running Guardian (pid {where.running.pid}, "
                  f"{where.running.api_url}); --local runs the checks here", markup=False,
                  highlight=False)
        if as_json:
            targets = daemon.get("targets", [])
            checks = [
                {k: v for k, v in c.items() if k != "history"}
                for t in targets for c in t.get("checks") or []
            ]
            print(json.dumps({"status": health, "source": "daemon", "results": checks,
                              "targets": targets}, indent=2))
        else:
            out.print(status_table(daemon))
        raise typer.Exit(EXIT_FOR.get(health, Exit.UNHEALTHY))
    setup_logging(None, "error", "pretty" if err.is_terminal else "json")
    from guardian.runtime import Guardian

    results = judge_from_outside(cfg, asyncio.run(Guardian(cfg).check_once(target)))
    health = aggregate(results, {t.name: t.critical for t in cfg.targets})
    if as_json:
        print(json.dumps({"status": health, "results": [r.to_dict() for r in results]}, indent=2))
    else:
        out.print(results_table(results, f"Guardian check: {health}"))
    raise typer.Exit(EXIT_FOR[health])


# --------------------------------------------------------------------------- client


@app.command()
def restart(
    target: Annotated[str, typer.Argument(help="target whose service to restart")],
    when_idle: Annotated[bool, typer.Option(
        "--when-idle", help="once the ComfyUI prompt running now has finished")] = False,
    config: ConfigOpt = None,
) -> None:
    """Ask the running Guardian to restart a target now (resets its circuit breaker)."""
    where = locate_or_exit(config)
    known = {t.name: t for t in where.config.targets}
    if target not in known:
        names = ", ".join(sorted(known)) or "none"
        err.print(f"unknown target {inert(target)!r} (targets: {inert(names)})", markup=False)
        raise typer.Exit(Exit.USAGE)
    if known[target].service is None:
        err.print(f"target {inert(target)!r} has no [targets.service]: Guardian only watches "
                  "it, there is nothing it could restart. Add a service (a systemd unit, a "
                  "Windows service or a command) to let Guardian restart it.", markup=False)
        raise typer.Exit(Exit.USAGE)
    query = "?when_idle=true" if when_idle else ""
    body = api_call(where, "POST", f"/api/targets/{target}/restart{query}")
    out.print(inert(body.get("message", body) if isinstance(body, dict) else body),
              markup=False)


def target_states(target: dict[str, Any]) -> list[str]:
    """What a person must know beyond ok/failed: busy, stuck, starting, breaker, restarting."""
    states: list[str] = []
    for chk in target.get("checks") or []:
        values = chk.get("values") or {}
        if values.get("busy") is True:
            prompt = values.get("running_prompt_id")
            running = values.get("running_for_s")
            secs = f" {running:.0f} s" if isinstance(running, int | float) else ""
            states.append(f"busy{' ' + str(prompt)[:8] if prompt else ''}{secs}")
        condition = values.get("condition")
        if isinstance(condition, str) and condition:
            states.append(condition)
        if chk.get("startup"):
            states.append("starting up")
    rec = target.get("recovery") or {}
    if rec.get("restarting"):
        states.append("restarting")
    if rec.get("breaker_open"):
        states.append("BREAKER OPEN")
    elif rec.get("attempts"):
        states.append(f"{rec['attempts']} restart attempt(s) in window")
    return list(dict.fromkeys(states))


def status_table(body: dict[str, Any]) -> Table:
    health = body.get("status", "unhealthy")
    # As on the page: never a bare "healthy" while an incident or a breaker is open.
    notes = []
    opened = len(body.get("incidents_open") or [])
    if opened:
        notes.append(f"{opened} open incident{'s' * (opened != 1)}")
    breakers = [str(t.get("name")) for t in body.get("targets") or []
                if (t.get("recovery") or {}).get("breaker_open")]
    if breakers:
        notes.append("breaker open: " + ", ".join(breakers))
    title = " · ".join([f"Guardian: {terminal(str(health))}", *map(terminal, notes)])
    table = Table(title=title, title_justify="left")
    table.add_column("target", overflow="fold")
    table.add_column("status", no_wrap=True)
    table.add_column("state", overflow="fold")
    table.add_column("reason", overflow="fold", ratio=1)
    style = {"ok": "green", "degraded": "yellow", "failed": "red"}
    for t in body.get("targets") or []:
        st = str(t.get("status"))
        table.add_row(
            # Target text, shown inert: an ESC from a health body is four visible characters.
            Text(inert(t.get("name"))),
            Text(inert(st), style=style.get(st, "dim")),
            Text(inert(", ".join(target_states(t))), style="bold red" if (t.get("recovery") or {})
                 .get("breaker_open") else ""),
            Text(inert(t.get("reason") or "")),
        )
    return table


@app.command()
def status(config: ConfigOpt = None) -> None:
    """Show the running Guardian's view of the stack; exit 0/1/2 like `check`, 3 unreachable."""
    where = locate_or_exit(config)
    body = api_call(where, "GET", "/api/status")
    out.print(status_table(body))
    opened = body.get("incidents_open") or []
    if opened:
        out.print(Text(inert(f"open incidents: {', '.join('#' + str(i.get('id')) for i in opened)}"
                             " (guardian incidents)")))
    raise typer.Exit(EXIT_FOR.get(body.get("status", "unhealthy"), Exit.UNHEALTHY))


# --------------------------------------------------------------------------- demo


def _demo_help() -> str:
    from guardian.demo.faults import fault_help

    return (
        "Start a simulated ComfyUI + panel under Guardian's supervision and watch them.\n\n"
        "Break things with POST <sim URL>/__sim/fault -d '{\"mode\": MODE}' (the URLs are in "
        "the banner). Every mode, and what Guardian should do about it:\n\n" + fault_help()
    )


@app.command(help=_demo_help())
def demo(
    directory: Annotated[
        Path | None, typer.Option("--dir", help="where the demo writes config, logs, state")
    ] = None,
    api_port: Annotated[
        int | None,
        typer.Option("--api-port", help="Guardian API port (default 8787 if free, else any; "
                                        "0: any free)"),
    ] = None,
    log_format: Annotated[str, typer.Option("--log-format")] = "auto",
) -> None:
    from guardian.demo.stack import DEFAULT_DEMO_DIR, demo_banner, prepare_demo
    from guardian.store import lock as store_lock

    # A second demo in the same directory must not rewrite the running one's config.
    where = (directory or DEFAULT_DEMO_DIR).resolve()
    from guardian.support.trust import untrusted_dir

    # Nor may a directory others can change get the demo's config (and its token) at all:
    # refused before anything is written, as `run` refuses before it starts.
    problem = untrusted_dir(where)
    if problem is not None:
        err.print(f"guardian: refusing to start: a path it would trust can be changed by "
                  f"others\n  {problem}", markup=False, highlight=False)
        raise typer.Exit(Exit.CANNOT_START)
    try:
        held = store_lock.acquire(where / "state" / "guardian.db")
    except store_lock.AlreadyRunning as e:
        err.print(f"guardian: {e}", markup=False, highlight=False)
        raise typer.Exit(Exit.CANNOT_START) from None
    try:
        demo_cfg, config_path = prepare_demo(where, api_port=api_port)
    except OSError as e:
        err.print(str(e), markup=False)
        raise typer.Exit(Exit.CANNOT_START) from None
    err.print(demo_banner(demo_cfg, config_path), highlight=False)
    code = run_guardian(demo_cfg, log_format, config_path=config_path)
    held.release()
    raise typer.Exit(code)


def _register_extensions() -> None:
    """Commands that live next to the code they drive."""
    from guardian.cli import incidents as incident_commands
    from guardian.cli import install
    from guardian.cli import queue as queue_commands

    install.register(app)
    incident_commands.register(app)
    queue_commands.register(app)


_register_extensions()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
