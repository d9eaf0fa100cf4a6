"""Prometheus exposition: gauges from state, counters from events, promtool-clean."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from datetime import UTC, datetime

import pytest
from prometheus_client.parser import text_string_to_metric_families

from guardian.api.metrics import METRIC_FAMILIES, Metrics
from guardian.core.events import IncidentEvent, IncidentTransition, RecoveryEvent, RecoveryKind
from guardian.core.result import REASON_CLASSES, Condition, ReasonClass, Status
from testkit.api import (
    INCIDENTS,
    client,
    healthy_results,
    make_view,
    result,
)

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def samples(text: str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(found: Samples, name: str, **labels: str) -> float | None:
    return found.get((name, frozenset(labels.items())))


async def scrape(view: object) -> str:
    async with client(view) as c:  # type: ignore[arg-type]
        resp = await c.get("/metrics")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain")
    return resp.text


async def test_gauges_follow_state_at_scrape_time() -> None:
    view = make_view(incident_list=INCIDENTS)
    found = samples(await scrape(view))
    gib, mib = 1024**3, 1024**2
    assert value(found, "guardian_target_up", target="panel", critical="true") == 1
    assert value(found, "guardian_target_health", target="system") == 0
    assert value(found, "guardian_disk_free_bytes", path="/") == 120.5 * gib
    assert value(found, "guardian_memory_available_bytes") == 8192 * mib
    assert value(found, "guardian_gpu_utilization_ratio", gpu="0") == pytest.approx(0.37)
    assert value(found, "guardian_gpu_memory_used_bytes", gpu="0") == 4563.5 * mib
    assert value(found, "guardian_gpu_temperature_celsius", gpu="0") == 61
    assert value(found, "guardian_comfyui_queue_pending", target="comfyui") == 2
    assert value(found, "guardian_comfyui_vram_free_bytes", target="comfyui", device="0") == (
        20000 * mib
    )
    assert value(found, "guardian_breaker_open", target="comfyui") == 0
    assert value(found, "guardian_incidents_open") == 1

    stuck = "queue stuck: 3 pending, nothing running for 400s"
    view.state.record(result("comfyui", "comfyui", Status.FAILED, stuck, {"online": True},
                             condition=Condition.STUCK_PENDING, reason_class="queue_stuck"))
    view.recovery["comfyui"]["breaker_open"] = True
    found = samples(await scrape(view))
    assert value(found, "guardian_target_up", target="comfyui", critical="true") == 0
    assert value(found, "guardian_target_health", target="comfyui") == 2
    assert value(found, "guardian_check_status", target="comfyui", check="comfyui",
                 kind="comfyui") == 2
    assert value(found, "guardian_check_failing", target="comfyui", check="comfyui",
                 kind="comfyui", reason_class="queue_stuck") == 1
    assert value(found, "guardian_breaker_open", target="comfyui") == 1
    # The stuck result carries no queue/VRAM values: no stale samples.
    assert value(found, "guardian_comfyui_queue_pending", target="comfyui") is None
    assert value(found, "guardian_comfyui_online", target="comfyui") == 1


async def test_documented_table_keys_are_read() -> None:
    results = [
        result("system", "gpu", values={"gpu1.util_percent": 50, "gpu1.vram_used_mb": 10,
                                        "gpu1.vram_total_mb": 20, "gpu1.temp_c": 70}),
    ]
    found = samples(await scrape(make_view(results=results)))
    assert value(found, "guardian_gpu_utilization_ratio", gpu="1") == 0.5
    assert value(found, "guardian_gpu_memory_total_bytes", gpu="1") == 20 * 1024**2
    assert value(found, "guardian_target_health", target="panel") == -1  # no results
    assert value(found, "guardian_target_up", target="panel", critical="true") is None


async def test_counters_and_histogram_from_events() -> None:
    view = make_view()
    metrics = Metrics(view, process=False)
    bus = view.state.bus
    now = datetime.now(UTC)
    failures: list[tuple[str, ReasonClass]] = [
        ("connection refused", "connection"), ("read timed out after 10s", "timeout"),
        ("timeout", "timeout"),
    ]  # as the http check and the engine class them
    for reason, cls in failures:
        view.state.record(result("panel", "http", Status.FAILED, reason, duration=0.2,
                                 reason_class=cls))
    bus.publish(RecoveryEvent("panel", RecoveryKind.RESTART_STARTED, now, 1))
    bus.publish(RecoveryEvent("panel", RecoveryKind.RESTART_SUCCEEDED, now, 1))
    bus.publish(RecoveryEvent("panel", RecoveryKind.RESTART_FAILED, now, 2))
    bus.publish(IncidentEvent(1, "panel", IncidentTransition.OPENED, now, "critical", "down"))
    found = samples(metrics.render()[0].decode())
    assert value(found, "guardian_check_failures_total", target="panel", check="http",
                 reason_class="timeout") == 2
    assert value(found, "guardian_check_failures_total", target="panel", check="http",
                 reason_class="connection") == 1
    assert value(found, "guardian_check_duration_seconds_count", target="panel",
                 check="http") == 3
    assert value(found, "guardian_check_duration_seconds_bucket", target="panel",
                 check="http", le="0.25") == 3
    assert value(found, "guardian_restarts_total", target="panel", outcome="succeeded") == 1
    assert value(found, "guardian_restarts_total", target="panel", outcome="failed") == 1
    assert value(found, "guardian_restarts_total", target="comfyui", outcome="failed") == 0
    assert value(found, "guardian_incidents_total", transition="opened") == 1
    assert value(found, "guardian_incidents_total", transition="resolved") == 0
    metrics.close()
    view.state.record(result("panel", "http", Status.FAILED, "timeout"))
    again = samples(metrics.render()[0].decode())
    assert value(again, "guardian_check_failures_total", target="panel", check="http",
                 reason_class="timeout") == 2  # unsubscribed


def test_registries_are_isolated() -> None:
    a, b = make_view(), make_view()
    ma, mb = Metrics(a, process=False), Metrics(b, process=False)
    a.state.record(result("panel", "http", Status.FAILED, "HTTP 500", reason_class="http_status"))
    fa, fb = samples(ma.render()[0].decode()), samples(mb.render()[0].decode())
    key = dict(target="panel", check="http", reason_class="http_status")
    assert value(fa, "guardian_check_failures_total", **key) == 1
    assert value(fb, "guardian_check_failures_total", **key) is None


async def test_the_reason_class_is_the_checks_own() -> None:
    """The label is the class the check set; a failure without one is "other" (the text
    is never parsed: "connection" in a reason says nothing here)."""
    view = make_view()
    view.state.record(result("panel", "http", Status.FAILED, "connection refused",
                             reason_class="connection"))
    view.state.record(result("disk", "disk", Status.FAILED, "connection of the disk: low",
                             kind="disk"))
    found = samples(await scrape(view))
    assert value(found, "guardian_check_failing", target="panel", check="http", kind="http",
                 reason_class="connection") == 1
    assert value(found, "guardian_check_failing", target="disk", check="disk", kind="disk",
                 reason_class="other") == 1
    labels = {dict(k[1]).get("reason_class") for k in found if k[0] == "guardian_check_failing"}
    assert labels <= set(REASON_CLASSES)


async def test_every_documented_family_is_exported_with_data() -> None:
    view = make_view(incident_list=INCIDENTS)
    view.state.record(result("panel", "http", Status.FAILED, "HTTP 500"))
    text = await scrape(view)
    names = {f.name for f in text_string_to_metric_families(text)}
    assert set(METRIC_FAMILIES) <= names


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
async def test_promtool_check_metrics_passes() -> None:
    view = make_view(incident_list=INCIDENTS)
    for r in healthy_results():
        view.state.record(r)
    view.state.record(result("panel", "http", Status.FAILED, "HTTP 500"))
    text = await scrape(view)
    proc = await asyncio.to_thread(
        subprocess.run,
        ["promtool", "check", "metrics"],
        input=text,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == "" and proc.stderr.strip() == "", proc.stdout + proc.stderr


def test_render_cache_min_age_then_events_then_max_age() -> None:
    """A flood of scrapes renders once per ``min_age``; after it, any event or ``max_age``
    makes a fresh render."""
    t = [0.0]
    view = make_view()
    metrics = Metrics(view, process=False, min_age=1.0, max_age=60, monotonic=lambda: t[0])
    first = metrics.render()[0]
    view.recovery["panel"]["breaker_open"] = True
    view.state.record(result("panel", "http"))
    t[0] = 0.9
    assert metrics.render()[0] is first  # inside min_age: reused despite the event
    t[0] = 1.0
    found = samples(metrics.render()[0].decode())
    assert value(found, "guardian_breaker_open", target="panel") == 1
    view.recovery["panel"]["breaker_open"] = False  # no event: reused until max_age
    t[0] = 50.0
    assert value(samples(metrics.render()[0].decode()), "guardian_breaker_open",
                 target="panel") == 1
    t[0] = 61.0
    assert value(samples(metrics.render()[0].decode()), "guardian_breaker_open",
                 target="panel") == 0


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
async def test_hostile_label_values_are_escaped_and_promtool_clean() -> None:
    """Text from a target (a ComfyUI device key) lands in a label value: escaped."""
    view = make_view()
    device = 'gpu"0\\x\ny} bad'
    view.state.record(result("comfyui", "comfyui", values={
        "online": True, f"vram_free_mb.{device}": 5.0, f"vram_total_mb.{device}": 9.0,
    }))
    text = await scrape(view)
    found = samples(text)
    assert value(found, "guardian_comfyui_vram_free_bytes", target="comfyui",
                 device=device) == 5 * 1024**2
    proc = await asyncio.to_thread(
        subprocess.run, ["promtool", "check", "metrics"], input=text, capture_output=True,
        text=True, timeout=30,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_registry_reads_what_a_scrape_gets() -> None:
    view = make_view()
    metrics = Metrics(view, process=False)
    view.state.record(result("panel", "http", Status.FAILED, "HTTP 500", duration=0.03,
                             reason_class="http_status"))
    sample = metrics.registry.get_sample_value
    assert sample("guardian_check_failures_total",
                  {"target": "panel", "check": "http", "reason_class": "http_status"}) == 1
    assert sample("guardian_check_duration_seconds_bucket",
                  {"target": "panel", "check": "http", "le": "0.05"}) == 1
    assert sample("guardian_check_duration_seconds_bucket",
                  {"target": "panel", "check": "http", "le": "0.025"}) == 0
    assert sample("guardian_check_duration_seconds_sum",
                  {"target": "panel", "check": "http"}) == pytest.approx(0.03)
    assert sample("guardian_target_health", {"target": "panel"}) == 2


@pytest.mark.slow
def test_scrapes_while_events_arrive_from_another_thread() -> None:
    """Events come from the checks' loop while the API thread renders: no torn output."""
    import threading

    view = make_view()
    metrics = Metrics(view, process=False, min_age=0)
    stop = threading.Event()

    def feed() -> None:
        i = 0
        while not stop.is_set():
            i += 1
            view.state.record(result("panel", "http", Status.FAILED, f"HTTP {500 + i % 3}"))
            view.state.record(result("comfyui", f"c{i % 50}", duration=0.01))

    worker = threading.Thread(target=feed)
    worker.start()
    try:
        for _ in range(20):
            text = metrics.render()[0].decode()
            found = samples(text)
            total = value(found, "guardian_check_duration_seconds_count", target="panel",
                          check="http")
            inf = value(found, "guardian_check_duration_seconds_bucket", target="panel",
                        check="http", le="+Inf")
            assert total == inf
    finally:
        stop.set()
        worker.join()


def test_duration_histograms_are_written_as_prometheus_client_writes_them() -> None:
    """Byte for byte (bucket order, ``le`` spelling, counts as ``3.0``, the sum's repr):
    series stay continuous with Guardians that rendered through the library."""
    from prometheus_client import CollectorRegistry, Histogram, generate_latest

    from guardian.api.metrics import DURATION_BUCKETS

    view = make_view()
    metrics = Metrics(view, process=False, min_age=0)
    registry = CollectorRegistry()
    reference = Histogram("guardian_check_duration_seconds", "How long checks take",
                          ("target", "check"), buckets=DURATION_BUCKETS, registry=registry)
    for i, duration in enumerate((0.0001, 0.004, 0.03, 0.03, 0.7, 3.0, 45.0, 120.0)):
        status = Status.FAILED if i % 3 else Status.OK
        view.state.record(result("panel", "http", status, "x", duration=duration))
        reference.labels(target="panel", check="http").observe(duration)

    def lines(text: str) -> list[str]:
        return [line for line in text.splitlines()
                if line.startswith("guardian_check_duration_seconds_")
                and 'check="http"' in line and 'target="panel"' in line and not line.startswith(
                    "guardian_check_duration_seconds_created")]

    ours = lines(metrics.render()[0].decode())
    assert len(ours) == 16
    assert ours == lines(generate_latest(registry).decode())


def test_process_series_are_read_through_psutil() -> None:
    """The dashboard's memory and CPU panels read these; on Windows too (psutil)."""
    import os

    import psutil

    view = make_view()
    found = samples(Metrics(view).render()[0].decode())
    me = psutil.Process(os.getpid())
    rss = value(found, "process_resident_memory_bytes")
    assert rss is not None and 0.5 < rss / me.memory_info().rss < 2
    cpu = value(found, "process_cpu_seconds_total")
    assert cpu is not None and 0 < cpu <= sum(me.cpu_times()[:2]) + 0.1
    assert value(found, "process_start_time_seconds") == pytest.approx(me.create_time())
    fds = value(found, "process_open_fds")
    assert fds is not None and abs(fds - me.num_fds()) <= 3
    info = [k for k in found if k[0] == "python_info"]
    assert len(info) == 1 and ("implementation", "CPython") in info[0][1]
    without = samples(Metrics(view, process=False).render()[0].decode())
    assert not [k for k in without if k[0].startswith(("process_", "python_"))]
