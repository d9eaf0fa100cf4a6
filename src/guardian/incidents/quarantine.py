"""The news of a quarantined prompt: what people are told, and how to let it run again.

Apart from the tracker because it is text built from a target's bytes: the prompt id and
the reason come from ComfyUI's queue, so they are made inert here (one line, nothing a
Markdown-rendering chat could turn into a link, a mention or markup of its own).
"""

from __future__ import annotations

from guardian.core.events import IncidentEvent, IncidentTransition, RecoveryEvent
from guardian.incidents.records import Incident
from guardian.support.escape import bounded, markdown_inline


def _inert(text: object, limit: int) -> str:
    """One escaped Markdown line; ``@`` followed by a zero-width space, so that no chat
    reads ``@everyone`` in a prompt id as a mention."""
    return markdown_inline(bounded(str(text), limit)).replace("@", "@\u200b")


def quarantine_news(incident: Incident, e: RecoveryEvent) -> IncidentEvent:
    """The ``quarantined`` transition of ``incident`` for the journal's event ``e``."""
    pid = _inert(e.values.get("prompt_id", ""), 128)
    words = [_inert(e.reason, 400) + "."]
    words.append(f"Run it again: guardian queue release {pid} --target {e.target}; "
                 f"forget it: guardian queue drop {pid} --target {e.target}.")
    saved = e.values.get("saved_to")
    if saved:
        words.append(f"Saved: {_inert(saved, 400)}")
    return IncidentEvent(
        incident_id=incident.id,
        target=incident.target,
        transition=IncidentTransition.QUARANTINED,
        time=e.time,
        severity=incident.severity,
        summary=" ".join(words),
        report_path=incident.report_path,
    )
