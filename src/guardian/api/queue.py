"""The ComfyUI queue journal in the API: the shapes of ``/api/health``'s per-target figures
and of ``guardian queue`` (list, release, drop), and the journal's Prometheus counters.

Shapes only ids, numbers and counts: ``extra_data`` (where API-node secrets live) never
leaves the journal's store.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Literal

from pydantic import BaseModel, Field

from guardian.core.events import RecoveryEvent, RecoveryKind
from guardian.journal.keeper import QueueView
from guardian.journal.store import Quarantined

PROMPT_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$"
QueueCommand = Literal["list", "release", "drop"]
# Why a journaled prompt was not restored (the restore event's lost_<reason> values).
LOST_REASONS = ("validation", "rejected", "credentials", "stuck")


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


QUEUE_FAMILIES = (
    ("guardian_comfyui_prompts_restored", "Prompts re-submitted after a ComfyUI restart",
     ("target",)),
    ("guardian_comfyui_prompts_quarantined",
     "Prompts running at repeated deaths, quarantined instead of re-run", ("target",)),
    ("guardian_comfyui_prompts_lost",
     "Journaled prompts not restored, by reason (validation, rejected, credentials, stuck)",
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
        if event.values.get("dry_run"):
            return  # told, never done: nothing restored, lost or quarantined
        if event.kind is RecoveryKind.QUEUE_RESTORED and not event.values.get("interrupted"):
            found.append((restored, (event.target,), int(event.values.get("restored", 0))))
            for reason in LOST_REASONS:
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
