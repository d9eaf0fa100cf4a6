"""The queue journal's counters: what a restore did, counted from its events; a dry run's
restore is told, never counted."""

from __future__ import annotations

from datetime import UTC, datetime

from prometheus_client.parser import text_string_to_metric_families

from guardian.api.metrics import Metrics
from guardian.core.events import RecoveryEvent, RecoveryKind
from testkit.api import make_view


def lost(text: str) -> dict[str, float]:
    return {s.labels["reason"]: s.value for family in text_string_to_metric_families(text)
            for s in family.samples if s.name == "guardian_comfyui_prompts_lost_total"}


def restored(text: str) -> list[float]:
    return [s.value for family in text_string_to_metric_families(text)
            for s in family.samples if s.name == "guardian_comfyui_prompts_restored_total"]


def test_lost_prompts_are_counted_by_reason_and_a_dry_run_not_at_all() -> None:
    view = make_view()
    metrics = Metrics(view, process=False)
    now = datetime.now(UTC)
    view.state.bus.publish(RecoveryEvent(
        "comfyui", RecoveryKind.QUEUE_RESTORED, now, reason="restored 3 of 5 prompts",
        values={"restored": 3, "lost_credentials": 1, "lost_stuck": 1}))
    view.state.bus.publish(RecoveryEvent(
        "comfyui", RecoveryKind.QUEUE_RESTORED, now,
        reason="dry run: would restore 4 of 5 prompts; none re-submitted",
        values={"restored": 0, "would_restore": 4, "lost_credentials": 1, "dry_run": True}))
    text = metrics.render()[0].decode()
    assert lost(text) == {"credentials": 1, "stuck": 1}
    assert restored(text) == [3]
    metrics.close()
