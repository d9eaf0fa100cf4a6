"""``guardian queue``: a ComfyUI target's queue journal and quarantine, through the API.

``guardian queue`` lists what the journal holds and what was quarantined; ``guardian queue
release ID`` puts a quarantined prompt back on the queue, ``guardian queue drop ID`` forgets
it. All three ask the running Guardian (with ``api.token``): the journal is its state.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from guardian.checks.comfyui.health import ComfyUICheckConfig
from guardian.cli.locate import Located, api_call, locate_or_exit
from guardian.cli.support import ConfigOpt, Exit, err, out
from guardian.support.escape import inert

queue_app = typer.Typer(help="A ComfyUI target's queue journal and quarantined prompts.",
                        invoke_without_command=True)
TargetOpt = Annotated[str | None, typer.Option(
    "--target", "-t", help="the ComfyUI target (default: the only one with a journal)")]


def _target(where: Located, target: str | None) -> str:
    journaled = [t.name for t in where.config.targets if t.queue.enabled and any(
        isinstance(c, ComfyUICheckConfig) and c.enabled for c in t.checks)]
    if target is None:
        if len(journaled) != 1:
            err.print("name the target with --target: "
                      f"{', '.join(journaled) or 'no ComfyUI target has a queue journal'}",
                      markup=False)
            raise typer.Exit(Exit.USAGE)
        return journaled[0]
    if target not in journaled:
        err.print(f"target {inert(target)!r} has no queue journal "
                  f"(one of: {', '.join(journaled)})", markup=False)
        raise typer.Exit(Exit.USAGE)
    return target


def _call(where: Located, method: str, path: str) -> dict[str, Any]:
    body = api_call(where, method, path)
    return body if isinstance(body, dict) else {}


def _show(body: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(body, indent=2))
        return
    if body.get("message"):
        out.print(Text(str(body["message"])))
    q = body.get("queue") or {}
    out.print(Text(
        f"{body.get('target')}: {q.get('running', 0)} running, {q.get('pending', 0)} pending, "
        f"{q.get('journaled', 0)} journaled; last restore {q.get('restored', 0)} of "
        f"{q.get('restore_total', 0)}"
        + (" (restore due)" if q.get("restore_due") else "")
        + (f"; {q['error']}" if q.get("error") else "")))
    journal = Table(title="journal", title_justify="left")
    for column in ("state", "number", "prompt_id", "client_id"):
        journal.add_column(column, overflow="fold")
    for entry in body.get("journal") or []:
        journal.add_row(*(Text(str(entry.get(k) if entry.get(k) is not None else "-"))
                          for k in ("state", "number", "prompt_id", "client_id")))
    out.print(journal)
    quarantine = Table(title="quarantine", title_justify="left")
    for column in ("prompt_id", "quarantined_at", "reason", "saved_to"):
        quarantine.add_column(column, overflow="fold")
    for entry in body.get("quarantine") or []:
        quarantine.add_row(*(Text(str(entry.get(k) or "-"))
                             for k in ("prompt_id", "quarantined_at", "reason", "saved_to")))
    out.print(quarantine)


@queue_app.callback()
def queue_command(
    ctx: typer.Context,
    target: TargetOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the API's JSON")] = False,
    config: ConfigOpt = None,
) -> None:
    """List the journal and the quarantined prompts."""
    if ctx.invoked_subcommand is not None:
        return
    where = locate_or_exit(config)
    _show(_call(where, "GET", f"/api/targets/{_target(where, target)}/queue"), as_json)


@queue_app.command("release")
def release_command(
    prompt_id: Annotated[str, typer.Argument(help="the quarantined prompt's id")],
    target: TargetOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Put a quarantined prompt back on the queue (at its end)."""
    where = locate_or_exit(config)
    name = _target(where, target)
    _show(_call(where, "POST", f"/api/targets/{name}/queue/{prompt_id}/release"), False)


@queue_app.command("drop")
def drop_command(
    prompt_id: Annotated[str, typer.Argument(help="the quarantined prompt's id")],
    target: TargetOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Forget a quarantined prompt."""
    where = locate_or_exit(config)
    name = _target(where, target)
    _show(_call(where, "POST", f"/api/targets/{name}/queue/{prompt_id}/drop"), False)


def register(app: typer.Typer) -> None:
    app.add_typer(queue_app, name="queue")
