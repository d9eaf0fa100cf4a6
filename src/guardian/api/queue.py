"""The ComfyUI queue journal in the API: per-target figures in ``/api/health`` and the
``guardian queue`` operations (list, release, drop), all behind the token.

Shapes only ids, numbers and counts: ``extra_data`` (where API-node secrets live) never
leaves the journal's store.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException
from starlette.responses import Response

from guardian.api.context import GuardianView
from guardian.api.routing import JSON, Endpoint, Param, Reply, error_replies
from guardian.core.events import RecoveryEvent, RecoveryKind
from guardian.journal.keeper import QueueView
from guardian.journal.store import Quarantined

PROMPT_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$"
QueueCommand = Literal["list", "release", "drop"]


class QueueHealth(BaseModel):
    online: bool = Field(description="the journal's last /queue read succeeded")
    running: int
    pending: int
    journaled: int = Field(description="prompts in the journal (what a restart would restore)")
    restore_due: bool = Field(description="a death was seen: the journal waits to restore")
    restored: int = Field(description="prompts re-submitted at the last restore")
    restore_total: int = Field(description="prompts the last restore had to put back")
    restored_at: str | None = None
    quarantined: int
    error: str | None = None


class QueueEntry(BaseModel):
    prompt_id: str
    state: str
    number: float
    client_id: str | None = None


class QuarantineEntry(BaseModel):
    prompt_id: str
    reason: str
    quarantined_at: str
    saved_to: str | None = None


class QueueListing(BaseModel):
    target: str
    queue: QueueHealth
    journal: list[QueueEntry]
    quarantine: list[QuarantineEntry]
    message: str | None = None


def queue_health(view: QueueView) -> QueueHealth:
    return QueueHealth(
        online=view.online, running=view.running, pending=view.pending,
        journaled=view.journaled, restore_due=view.restore_due, restored=view.restored,
        restore_total=view.restore_total, restored_at=view.restored_at,
        quarantined=view.quarantined, error=view.error)


def queue_listing(view: QueueView, quarantine: list[Quarantined],
                  message: str | None = None) -> QueueListing:
    return QueueListing(
        target=view.target, queue=queue_health(view),
        journal=[QueueEntry.model_validate(entry) for entry in view.journal],
        quarantine=[QuarantineEntry(prompt_id=q.prompt.prompt_id, reason=q.reason,
                                    quarantined_at=q.quarantined_at, saved_to=q.saved_to)
                    for q in quarantine],
        message=message)


def queue_endpoints(view: GuardianView, name: Param, ok: Callable[[type[BaseModel]],
                                                                    dict[int, Reply]]
                    ) -> list[Endpoint]:
    """``GET /api/targets/{name}/queue`` and the release/drop actions (token needed)."""
    prompt_id = Param("prompt_id", "path", str, pattern=PROMPT_ID_PATTERN)

    async def command(target: str, what: QueueCommand, pid: str | None) -> Response:
        try:
            listing = await view.queue_command(target, what, pid)
        except KeyError:
            raise HTTPException(404, f"no queue journal entry {pid or target!r}") from None
        except RuntimeError as e:
            raise HTTPException(503, str(e)) from None
        return Response(listing.model_dump_json(), media_type=JSON)

    async def queue(name: str) -> Response:
        """A ComfyUI target's queue journal and quarantined prompts (no secrets)."""
        return await command(name, "list", None)

    async def release_prompt(name: str, prompt_id: str) -> Response:
        """Put a quarantined prompt back on the target's queue."""
        return await command(name, "release", prompt_id)

    async def drop_prompt(name: str, prompt_id: str) -> Response:
        """Forget a quarantined prompt."""
        return await command(name, "drop", prompt_id)

    replies: dict[int, Any] = {**ok(QueueListing), **error_replies(401, 403, 404, 503)}
    return [
        Endpoint("GET", "/api/targets/{name}/queue", queue, replies, params=[name],
                 tags=["queue"], auth=True),
        Endpoint("POST", "/api/targets/{name}/queue/{prompt_id}/release", release_prompt,
                 replies, params=[name, prompt_id], tags=["queue"], auth=True),
        Endpoint("POST", "/api/targets/{name}/queue/{prompt_id}/drop", drop_prompt,
                 replies, params=[name, prompt_id], tags=["queue"], auth=True),
    ]


QUEUE_FAMILIES = (
    ("guardian_comfyui_prompts_restored", "Prompts re-submitted after a ComfyUI restart",
     ("target",)),
    ("guardian_comfyui_prompts_quarantined",
     "Prompts running at repeated deaths, quarantined instead of re-run", ("target",)),
    ("guardian_comfyui_prompts_lost",
     "Journaled prompts not restored, by reason (validation, rejected, stuck)",
     ("target", "reason")),
)


class QueueMetrics:
    """The journal's counters, from its events on the bus (so they count what the timeline
    says). Fed on the checks' loop, rendered on the API thread: guarded by a lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, dict[tuple[str, ...], int]] = {f: {} for f, _, _ in
                                                               QUEUE_FAMILIES}

    def on_event(self, event: RecoveryEvent) -> None:
        restored, quarantined, lost = QUEUE_FAMILIES[0][0], QUEUE_FAMILIES[1][0], \
            QUEUE_FAMILIES[2][0]
        found: list[tuple[str, tuple[str, ...], int]] = []
        if event.kind is RecoveryKind.QUEUE_RESTORED and not event.values.get("interrupted"):
            found.append((restored, (event.target,), int(event.values.get("restored", 0))))
            for reason in ("validation", "rejected", "stuck"):
                n = int(event.values.get(f"lost_{reason}", 0))
                if n:
                    found.append((lost, (event.target, reason), n))
        elif event.kind is RecoveryKind.PROMPT_QUARANTINED:
            found.append((quarantined, (event.target,), 1))
        with self._lock:
            for family, key, n in found:
                counts = self._counts[family]
                counts[key] = counts.get(key, 0) + n

    def render(self, family: Callable[[str, str, str], None], parts: list[str],
               labels: Callable[[tuple[str, ...], tuple[str, ...]], str]) -> None:
        with self._lock:
            copies = {f: list(c.items()) for f, c in self._counts.items()}
        for name, doc, names in QUEUE_FAMILIES:
            family(f"{name}_total", "counter", doc)
            for key, n in copies[name]:
                parts.append(f"{name}_total{labels(names, key)} {n:.1f}\n")
