"""CLI commands: ``guardian incidents``, ``guardian report ID``, ``guardian notify-test``.

They read the store file directly (WAL lets them read while Guardian writes), so they
work whether or not Guardian is running.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from guardian.cli.locate import locate_or_exit
from guardian.cli.support import ConfigOpt, err, load_or_exit, out
from guardian.config.schema import Config
from guardian.incidents.notify import Notifier
from guardian.incidents.redact import redact
from guardian.incidents.report import Reporter
from guardian.incidents.snapshot import snapshot_kinds, system_snapshot
from guardian.incidents.store import Incident, Store, StoreError
from guardian.store.db import StoreDamaged
from guardian.support.escape import inert, terminal


def _store(cfg: Config, must_exist: bool) -> Store | None:
    """Open the store for reading, or say clearly why not (exit 1), never a traceback.

    A strict open: a damaged or newer file is reported, not moved or replaced (that is
    the running Guardian's job), and an empty file is not turned into a fresh store.
    """
    path = cfg.store_path
    try:
        empty = path.stat().st_size == 0
    except FileNotFoundError:
        empty = None
    except OSError as e:
        err.print(f"cannot read the incident store {path}: {e}", markup=False, highlight=False)
        raise typer.Exit(1) from None
    if empty is None or empty:
        if must_exist:
            what = "no incident store at" if empty is None else "the incident store is empty:"
            err.print(f"{what} {path}", markup=False, highlight=False)
            raise typer.Exit(1)
        return None
    try:
        return Store.from_config(cfg)
    except StoreDamaged as e:
        err.print(
            f"{e}. The running Guardian moves a damaged store aside (keeping it) and starts"
            " a fresh one; `guardian run` does so at its next start.",
            markup=False,
            highlight=False,
        )
        raise typer.Exit(1) from None
    except (StoreError, OSError) as e:
        err.print(f"cannot open the incident store: {e}", markup=False, highlight=False)
        raise typer.Exit(1) from None


def _short(dt: object, fmt: str = "%Y-%m-%d %H:%M:%S") -> str:
    return dt.astimezone(UTC).strftime(fmt) if isinstance(dt, datetime) else "-"


def _lasted(i: Incident) -> str:
    """How long it was open: ``42s``, ``17m``, ``3h05m``, ``2d4h``."""
    if i.resolved_at is None:
        return ""
    secs = max(0, int((i.resolved_at - i.opened_at).total_seconds()))
    if secs < 60:
        return f"{secs}s"
    if secs < 3600:
        return f"{secs // 60}m"
    if secs < 86400:
        return f"{secs // 3600}h{secs % 3600 // 60:02d}m"
    return f"{secs // 86400}d{secs % 86400 // 3600}h"


def _fit(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(1, width - 1)] + "…"


def incidents_lines(rows: list[Incident], title: str, width: int = 80) -> list[Text]:
    """One or two lines per incident at any width down to 60: the facts, then the summary.

    A table whose summary column folds into 16-column scraps made one incident 25 lines
    at 80 columns; here the columns are short and fixed, and the summary gets a line of
    its own, cut to the width (``guardian report ID`` has it whole).
    """
    year = "%Y-" if len({i.opened_at.year for i in rows}) > 1 else ""
    opened = [_short(i.opened_at, f"{year}%m-%d %H:%M") for i in rows]
    closed = []
    for i in rows:
        if i.resolved_at is None:
            closed.append("-")
        else:
            same_day = i.resolved_at.astimezone(UTC).date() == i.opened_at.astimezone(UTC).date()
            fmt = "%H:%M" if same_day else f"{year}%m-%d %H:%M"
            closed.append(f"{_short(i.resolved_at, fmt)} ({_lasted(i)})")
    fails = [f"{i.failure_count}" + (f", {i.flap_count} flap{'s' * (i.flap_count != 1)}"
                                     if i.flap_count else "") for i in rows]
    w_id = max(2, *(len(str(i.id)) for i in rows))
    w_target = min(16, max(6, *(len(inert(i.target)) for i in rows)))
    w_open = max(len("Opened UTC"), *(len(o) for o in opened))
    w_closed = max(len("Closed UTC"), *(len(c) for c in closed))
    style = {"open": "yellow", "escalated": "bold red", "resolved": "green"}
    header = (f"{'ID':>{w_id}}  {'Target':<{w_target}}  {'Status':<9}  {'Opened UTC':<{w_open}}"
              f"  {'Closed UTC':<{w_closed}}  Failures")
    lines = [Text(title, style="bold"), Text(_fit(header, width), style="bold")]
    indent = " " * (w_id + 2)
    for i, o, c, f in zip(rows, opened, closed, fails, strict=True):
        line = Text(f"{i.id:>{w_id}}  {_fit(inert(i.target), w_target):<{w_target}}  ")
        line.append(f"{i.status!s:<9}", style=style.get(str(i.status), ""))
        line.append(f"  {o:<{w_open}}  {c:<{w_closed}}  {f}")
        line.truncate(width)
        lines.append(line)
        summary = " ".join(inert(redact(i.summary)).split())
        if summary:
            lines.append(Text(indent + _fit(summary, width - len(indent)), style="dim"))
    return lines


def incidents_command(
    all_: Annotated[bool, typer.Option("--all", "-a", help="include resolved incidents")] = False,
    config: ConfigOpt = None,
) -> None:
    """List open incidents (all of them with --all), newest first."""
    cfg = locate_or_exit(config).config
    store = _store(cfg, must_exist=False)
    if store is None:
        out.print(f"no incidents recorded (no store at {cfg.store_path})", markup=False)
        return
    try:
        rows = store.incidents(include_resolved=all_)
    except StoreError as e:
        err.print(f"cannot read the incident store: {e}", markup=False, highlight=False)
        raise typer.Exit(1) from None
    finally:
        store.close()
    if not rows:
        out.print("no incidents" if all_ else "no open incidents (--all shows resolved ones)")
        return
    title = "Incidents, newest first" if all_ else "Open incidents (--all: resolved ones too)"
    width = out.width if out.is_terminal or out.width else 80
    for line in incidents_lines(rows, title, max(60, width)):
        out.print(line, soft_wrap=False, overflow="ignore", crop=True)


def report_command(
    incident_id: Annotated[int, typer.Argument(help="incident ID (see `guardian incidents`)")],
    out_file: Annotated[
        Path | None, typer.Option("--out", "-o", help="write to this file instead of stdout")
    ] = None,
    config: ConfigOpt = None,
) -> None:
    """Print (or write) the Markdown report of an incident, generated from the store."""
    cfg = locate_or_exit(config).config
    store = _store(cfg, must_exist=True)
    assert store is not None
    try:
        incident = store.incident(incident_id)
        if incident is None:
            err.print(f"no incident #{incident_id}", markup=False)
            raise typer.Exit(1)
        text = asyncio.run(_render(cfg, store, incident_id, incident.target))
    except StoreError as e:
        err.print(f"cannot read the incident store: {e}", markup=False, highlight=False)
        raise typer.Exit(1) from None
    finally:
        store.close()
    if out_file is None:
        print(text)
        return
    try:
        out_file.parent.mkdir(parents=True, exist_ok=True)
        out_file.write_text(text, encoding="utf-8")
    except OSError as e:
        err.print(f"cannot write {out_file}: {e.strerror or e}", markup=False)
        raise typer.Exit(1) from None
    out.print(f"report of incident #{incident_id} written to {out_file}", markup=False)


async def _render(cfg: Config, store: Store, incident_id: int, target: str) -> str:
    """Render with a live log tail from the target's service backend where one exists;
    the reporter falls back to the tail saved at escalation when that fails."""
    from guardian.services.factory import build_backend

    backend = None
    try:
        tcfg = cfg.target(target)
        backend = build_backend(tcfg)
    except Exception:
        backend = None

    async def tail(_target: str, n: int) -> list[str]:
        if backend is None:
            raise LookupError("no service backend")
        return await backend.log_tail(n)

    # Read here, not inside the snapshot function: that runs in a worker thread and the
    # SQLite connection belongs to this one.
    latest = store.latest_results(snapshot_kinds())

    def snapshot() -> dict[str, list[str]]:
        return system_snapshot(latest)

    reporter = Reporter(cfg, store, log_tail=tail if backend else None, snapshot=snapshot)
    try:
        return await reporter.render(incident_id, live_log=backend is not None)
    finally:
        if backend is not None:
            with contextlib.suppress(Exception):
                await backend.aclose()


def notify_test_command(config: ConfigOpt = None) -> None:
    """Send a test message to every configured notification URL; exit 1 if any fails."""
    cfg = load_or_exit(config)
    if not cfg.notify.urls:
        err.print("no notification URLs configured ([notify] urls)", markup=False)
        raise typer.Exit(1)
    store: Store | None = None
    try:
        store = Store.from_config(cfg)
    except (StoreError, OSError):
        store = None  # a test message does not need the store
    try:
        results = asyncio.run(Notifier(cfg, store).send_test())
    finally:
        if store is not None:
            store.close()
    table = Table(title="Notification test")
    for col in ("Channel", "Result", "Error"):
        table.add_column(col, overflow="fold")
    for label, ok, error in results:
        table.add_row(
            terminal(label), "[green]sent[/]" if ok else "[red]failed[/]", terminal(error or "-")
        )
    out.print(table)
    if not all(ok for _, ok, _ in results):
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add the incident commands to Guardian's CLI."""
    app.command("incidents")(incidents_command)
    app.command("report")(report_command)
    app.command("notify-test")(notify_test_command)
