"""Declared readings: one parser for every flat key form, typed conditions in results."""

from __future__ import annotations

from datetime import UTC, datetime

from guardian.checks.registry import REGISTRY
from guardian.core.result import CheckResult, Condition, Outcome, Reading, Status, Value

VALUES: dict[str, Value] = {
    "gpu0.temp_c": 61, "gpu1.temp_c": 70.5, "gpu0.name": "RTX",
    "free_gb./data": 12.5, "free_gb./odd\npath": 1, "free_gb./bad": "n/a",
    "online": True, "busy": "yes", "nan_reading": float("nan"),
}


def test_a_reading_finds_its_items_in_its_own_key_form() -> None:
    temp = Reading("temp_c", "celsius", index="gpu", key="gpu{index}.temp_c")
    assert temp.of(VALUES) == {"0": 61, "1": 70.5}
    free = Reading("free_gb", "GiB", index="path")
    assert free.numbers(VALUES) == {"/data": 12.5, "/odd\npath": 1.0}  # any character
    assert Reading("name", "text", index="gpu", key="gpu{index}.name").texts(VALUES) == {
        "0": "RTX"
    }
    assert Reading("missing", "count").of(VALUES) == {}
    assert Reading("nan_reading", "count").numbers(VALUES) == {}


def test_a_gauge_scales_numbers_and_flags_and_has_its_default() -> None:
    online = Reading("online", "bool", default=0.0)
    assert online.gauge(VALUES) == {"": 1.0}
    assert online.gauge({}) == {"": 0.0}
    assert Reading("busy", "bool").gauge(VALUES) == {}  # not a flag: no sample
    mib = Reading("free_gb", "GiB", index="path", scale=2.0)
    assert mib.gauge(VALUES) == {"/data": 25.0, "/odd\npath": 2.0}


def test_a_result_carries_its_condition_typed_and_in_its_served_values() -> None:
    out = Outcome.failed("queue stuck", queue_pending=3).tagged(
        condition=Condition.STUCK_PENDING, reason_class="queue_stuck"
    )
    assert out.condition is Condition.STUCK_PENDING and "condition" not in out.values
    now = datetime(2025, 1, 1, tzinfo=UTC)
    r = CheckResult("t", "comfyui", "comfyui", Status.FAILED, out.reason, out.values, now, now,
                    0.1, condition=out.condition, reason_class=out.reason_class)
    assert r.to_dict()["values"] == {"condition": "stuck_pending", "queue_pending": 3}
    plain = CheckResult("t", "disk", "disk", Status.OK, "", {"x": 1}, now, now, 0.1)
    assert plain.condition is None and plain.to_dict()["values"] == {"x": 1}


def test_every_declared_metric_is_unique_and_named_for_prometheus() -> None:
    metrics = [r.metric for spec in REGISTRY for r in spec.readings if r.metric]
    assert len(metrics) == len(set(metrics))
    assert all(m.startswith("guardian_") and m.replace("_", "").isalnum() for m in metrics)
