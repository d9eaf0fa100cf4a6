"""Putting a journaled queue back on a restarted ComfyUI, and quarantining poison prompts.

Order is kept and restored prompts run before anything submitted after the restart: they
are re-submitted with explicit negative numbers (``i - total``), below the 0 that ComfyUI's
counter restarts at; an explicit number does not advance that counter. Each keeps its
original ``prompt_id`` (a client polling ``/history/<id>`` gets its result), ``extra_data``,
``client_id`` and ``outputs_to_execute`` as ``partial_execution_targets``. A prompt the
server already has (queued, running, in history) is skipped, so nothing runs twice.

API nodes (comfy.org partner nodes) need the user's credentials, which the client puts in
``extra_data`` (``api_key_comfy_org``, ``auth_token_comfy_org``). ComfyUI 0.3.64 shows them
in ``/queue``: the journal keeps them in its 0600 store and re-submits them. Newer ComfyUI
versions keep them out of ``/queue``: a journaled prompt whose nodes take those
credentials (their hidden inputs in ``/object_info``) but that carries none would run
without the user's key and fail. It is not re-submitted: lost, reason ``credentials``,
named in the restore's timeline entry, so its owner queues it again.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from guardian.checks.comfyui.client import (
    ComfyUIClient,
    ComfyUIError,
    QueuedPrompt,
    QueueSnapshot,
    SubmitRejected,
)
from guardian.support.private_file import write_private_text
from guardian.support.redact import is_secret_name, redact_data

VALIDATION_ERRORS = frozenset({"invalid_prompt", "prompt_outputs_failed_validation",
                               "prompt_no_outputs"})
CREDENTIAL_KEYS = ("api_key_comfy_org", "auth_token_comfy_org")  # in extra_data
CREDENTIAL_INPUTS = frozenset({"API_KEY_COMFY_ORG", "AUTH_TOKEN_COMFY_ORG"})  # hidden inputs
MAX_NODE_LOOKUPS = 256  # node classes asked about per restore (a workflow has a few dozen)
MAX_CLASS_NAME = 200


@dataclass
class RestoreOutcome:
    """What one restore did, for the timeline, the metrics and ``/api/health``."""

    restored: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # the server had them already
    lost: list[tuple[str, str, str]] = field(default_factory=list)  # (id, reason, words)
    quarantined: list[str] = field(default_factory=list)
    not_rerun: list[str] = field(default_factory=list)  # the ladder's stuck prompt
    interrupted: str | None = None  # the server went away mid-restore: retried later
    # ``[guardian] dry_run``: what would have been re-submitted (and quarantined); nothing
    # was sent and nothing quarantined.
    dry_run: bool = False
    would_restore: list[str] = field(default_factory=list)

    @property
    def considered(self) -> int:
        return (len(self.restored) + len(self.would_restore) + len(self.lost)
                + len(self.quarantined) + len(self.not_rerun))

    def headline(self) -> str:
        if self.dry_run:
            text = (f"dry run: would restore {len(self.would_restore)} of {self.considered} "
                    "prompts; none re-submitted")
            return text + (f" ({len(self.skipped)} already on the server)"
                           if self.skipped else "")
        if self.interrupted is not None:
            return (f"restore interrupted after {len(self.restored)} prompts: ComfyUI went "
                    "away again; the journal restores them after the next restart")
        text = f"restored {len(self.restored)} of {self.considered} prompts"
        if self.skipped:
            text += f" ({len(self.skipped)} already on the server)"
        return text


def submit_body(prompt: QueuedPrompt, number: float) -> dict[str, Any]:
    """``POST /prompt`` for a journaled prompt, as it was first submitted."""
    body: dict[str, Any] = {
        "prompt": prompt.prompt,
        "prompt_id": prompt.prompt_id,
        "number": number,
        "extra_data": dict(prompt.extra_data),
        "partial_execution_targets": prompt.outputs,
    }
    if prompt.client_id is not None:
        body["client_id"] = prompt.client_id
    return body


async def known_ids(client: ComfyUIClient, live: QueueSnapshot,
                    candidates: list[QueuedPrompt]) -> set[str]:
    """The candidates the server already has: in its queue or its history."""
    known = live.ids() & {p.prompt_id for p in candidates}
    for prompt in candidates:
        if prompt.prompt_id not in known and await client.has_history(prompt.prompt_id):
            known.add(prompt.prompt_id)
    return known


def _classes(prompt: QueuedPrompt) -> set[str]:
    return {ct for node in prompt.prompt.values() if isinstance(node, dict)
            and isinstance(ct := node.get("class_type"), str) and 0 < len(ct) <= MAX_CLASS_NAME}


async def _takes_credentials(client: ComfyUIClient, name: str) -> bool:
    """Whether node class ``name`` takes the comfy.org credentials (an API node). False
    when the server cannot say: Guardian's doubt never costs a prompt its restore."""
    try:
        data = await client.get_json(f"/object_info/{quote(name, safe='')}")
    except ComfyUIError:
        return False
    info = data.get(name) if isinstance(data, dict) else None
    if not isinstance(info, dict):
        return False
    inputs = info.get("input")
    hidden = inputs.get("hidden") if isinstance(inputs, dict) else None
    if isinstance(hidden, dict) and CREDENTIAL_INPUTS & {
            v for v in hidden.values() if isinstance(v, str)}:
        return True
    return info.get("api_node") is True


async def without_credentials(client: ComfyUIClient,
                              prompts: Iterable[QueuedPrompt]) -> dict[str, list[str]]:
    """The prompts that use API nodes but carry no credentials: prompt_id -> those nodes'
    classes. Only prompts without credentials cost lookups, one per node class."""
    lacking = [p for p in prompts if not any(p.extra_data.get(k) for k in CREDENTIAL_KEYS)]
    names = sorted(set().union(*(_classes(p) for p in lacking)))[:MAX_NODE_LOOKUPS]
    api_nodes = {name for name in names if await _takes_credentials(client, name)}
    found: dict[str, list[str]] = {}
    for prompt in lacking:
        used = sorted(_classes(prompt) & api_nodes)
        if used:
            found[prompt.prompt_id] = used
    return found


def credentials_words(classes: list[str]) -> str:
    shown = ", ".join(classes[:5]) + (f" and {len(classes) - 5} more" if len(classes) > 5
                                      else "")
    return (f"it uses API nodes ({shown}) whose credentials ComfyUI did not show in /queue:"
            " not re-run without them; queue it again from its client")


async def resubmit(client: ComfyUIClient, plan: list[QueuedPrompt],
                   outcome: RestoreOutcome) -> None:
    """Submit ``plan`` in order; a rejection is reported once, never retried."""
    total = len(plan)
    for i, prompt in enumerate(plan):
        try:
            await client.submit(submit_body(prompt, float(i - total)), "restored prompt")
        except SubmitRejected as exc:
            reason = "validation" if exc.error_type in VALIDATION_ERRORS else "rejected"
            outcome.lost.append((prompt.prompt_id, reason, str(exc)))
            continue
        except ComfyUIError as exc:
            outcome.interrupted = str(exc)
            return
        outcome.restored.append(prompt.prompt_id)


def workflow_of(prompt: QueuedPrompt) -> Any:
    """The UI workflow ComfyUI's frontend puts in ``extra_data.extra_pnginfo.workflow``."""
    info = prompt.extra_data.get("extra_pnginfo")
    return info.get("workflow") if isinstance(info, dict) else None


def public_extra(extra: dict[str, Any]) -> dict[str, Any]:
    """``extra_data`` without secrets: secret-named keys dropped, the rest redacted."""
    kept = {k: v for k, v in extra.items() if not is_secret_name(k)}
    cleaned = redact_data(kept)
    return cleaned if isinstance(cleaned, dict) else {}


def save_quarantined(report_dir: Path, target: str, prompt: QueuedPrompt, reason: str) -> Path:
    """The poison prompt (API form) and its workflow beside the incident reports, secrets
    removed, 0600."""
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in prompt.prompt_id)[:80]
    path = report_dir / f"quarantine-{target}-{safe}.json"
    body = {
        "target": target,
        "prompt_id": prompt.prompt_id,
        "reason": reason,
        "prompt": redact_data(prompt.prompt),
        "workflow": redact_data(workflow_of(prompt)),
        "extra_data": public_extra(
            {k: v for k, v in prompt.extra_data.items() if k != "extra_pnginfo"}),
    }
    report_dir.mkdir(parents=True, exist_ok=True)
    write_private_text(path, json.dumps(body, indent=2, sort_keys=True))
    return path
