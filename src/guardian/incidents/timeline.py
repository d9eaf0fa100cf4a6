"""An incident's timeline: opened, every recovery action it grouped, escalated, resolved.

Apart from the store (which only stores rows) because the timeline is a view: one query
for the newest events of many incidents at once (the status page shows every incident),
and the shape the API returns.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from guardian.incidents.records import Incident, StoredRecovery, recovery_from_row
from guardian.incidents.store import Store

TIMELINE_EVENTS = 200  # recovery events shown per incident (the newest)


def timeline_events(
    store: Store, incident_ids: Sequence[int], per_incident: int = TIMELINE_EVENTS
) -> dict[int, list[StoredRecovery]]:
    """The recovery events of each incident (its newest ``per_incident``), in time order:
    one query through the ``recovery_timeline`` index for all of them."""
    ids = sorted({int(i) for i in incident_ids})
    out: dict[int, list[StoredRecovery]] = {i: [] for i in ids}
    for chunk in (ids[i : i + 500] for i in range(0, len(ids), 500)):  # bound the IN list
        for r in store.query(timeline_sql(len(chunk)), (*chunk, per_incident)):
            out[r["incident_id"]].append(recovery_from_row(r))
    return out


def timeline_sql(n: int) -> str:
    """The timeline query for ``n`` incident ids (then the per-incident limit) as bound
    parameters: the newest events of each, returned per incident in time order."""
    marks = ",".join("?" * n)
    return (
        "SELECT * FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY incident_id"
        " ORDER BY time DESC, id DESC) AS newest FROM recovery"
        f" WHERE incident_id IN ({marks})) WHERE newest <= ? ORDER BY incident_id, time, id"
    )


def incident_dicts(store: Store, found: list[Incident]) -> list[dict[str, Any]]:
    """Incidents as the API shows them, with their timelines read in one query."""
    events = timeline_events(store, [i.id for i in found])
    return [_incident_dict(i, events.get(i.id, [])) for i in found]


def _timeline(incident: Incident, events: list[StoredRecovery]) -> list[dict[str, Any]]:
    """Opened, every recovery action the incident grouped, escalated, resolved: in order."""
    entries: list[dict[str, Any]] = [{"time": incident.opened_at, "kind": "opened",
                                      "reason": incident.summary}]
    for e in events:
        entries.append({"time": e.time, "kind": e.kind, "attempt": e.attempt,
                        "reason": e.reason, "detail": e.detail})
    if incident.escalated_at is not None:
        entries.append({"time": incident.escalated_at, "kind": "escalated",
                        "reason": incident.severity})
    if incident.resolved_at is not None:
        entries.append({"time": incident.resolved_at, "kind": "resolved"})
    entries.sort(key=lambda x: x["time"])
    for x in entries:
        x["time"] = x["time"].isoformat()
    return entries


def _incident_dict(incident: Incident, events: list[StoredRecovery]) -> dict[str, Any]:
    def iso(t: datetime | None) -> str | None:
        return t.isoformat() if t is not None else None

    return {
        "id": incident.id,
        "target": incident.target,
        "status": str(incident.status),
        "severity": incident.severity,
        "summary": incident.summary,
        "opened_at": iso(incident.opened_at),
        "escalated_at": iso(incident.escalated_at),
        "resolved_at": iso(incident.resolved_at),
        "failure_count": incident.failure_count,
        "flap_count": incident.flap_count,
        "report_path": incident.report_path,
        "timeline": _timeline(incident, events),
    }
