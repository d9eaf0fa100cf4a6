"""Prometheus metrics on a private registry: gauges read at scrape time, counters from events.

Gauges come from a custom collector that reads the cached :class:`~guardian.state.State`
when Prometheus scrapes, so they can never drift from what ``/api/health`` says. Counters
and the duration histogram are fed by the :class:`~guardian.events.EventBus`. Which check
value keys feed which gauge is documented in :mod:`guardian.api.readings`; a missing key
just means no sample. The registry is per :class:`Metrics` instance (not the global one)
so several Guardians, or tests, never share series.

Encodings (numeric, so they graph and alert with plain comparisons):

* ``guardian_target_health{target}``: -1 unknown (no results yet), 0 ok (or all skipped),
  1 degraded, 2 failed.
* ``guardian_target_up{target,critical}``: 0 when the target's worst status is failed,
  else 1 (no sample before its first result). ``critical`` is ``"true"``/``"false"``.
* ``guardian_check_status{target,check,kind}``: -1 skipped, 0 ok, 1 degraded, 2 failed.
* ``guardian_check_failing{target,check,kind,reason_class}``: 1 while the latest result is
  degraded or failed, with its reason classified into a fixed set (see
  :data:`~guardian.api.readings.REASON_CLASSES`); no sample while ok.
* ``guardian_check_failures_total{target,check,reason_class}`` counts failed results.
* ``guardian_restarts_total{target,outcome}``: outcome succeeded, failed or dry_run.
* ``guardian_remediations_total{target,action,outcome}``: remediation ladder runs by their
  last rung (interrupt, free, none) and outcome (succeeded, failed).
* ``guardian_comfyui_busy{target}`` 1 while a prompt runs; ``guardian_comfyui_running_seconds``
  how long the running prompt has been seen running.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Final

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from guardian.api import readings
from guardian.api.context import GuardianView
from guardian.events import Event, IncidentEvent, IncidentTransition, RecoveryEvent, RecoveryKind
from guardian.result import CheckResult, Status, worst

CHECK_STATUS_CODE: Final = {Status.SKIPPED: -1, Status.OK: 0, Status.DEGRADED: 1, Status.FAILED: 2}
RESTART_OUTCOMES: Final = {
    RecoveryKind.RESTART_SUCCEEDED: "succeeded",
    RecoveryKind.RESTART_FAILED: "failed",
    RecoveryKind.DRY_RUN: "dry_run",
}
DURATION_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

# Every family Guardian exports (without _total/_bucket suffixes). Dashboards and alerts
# may only use these; a test holds them to it.
METRIC_FAMILIES: Final = (
    "guardian_target_up",
    "guardian_target_health",
    "guardian_check_status",
    "guardian_check_failing",
    "guardian_check_last_run_timestamp_seconds",
    "guardian_disk_free_bytes",
    "guardian_disk_total_bytes",
    "guardian_memory_available_bytes",
    "guardian_memory_total_bytes",
    "guardian_gpu_utilization_ratio",
    "guardian_gpu_memory_used_bytes",
    "guardian_gpu_memory_total_bytes",
    "guardian_gpu_temperature_celsius",
    "guardian_comfyui_online",
    "guardian_comfyui_queue_running",
    "guardian_comfyui_queue_pending",
    "guardian_comfyui_vram_free_bytes",
    "guardian_comfyui_vram_total_bytes",
    "guardian_comfyui_busy",
    "guardian_comfyui_running_seconds",
    "guardian_breaker_open",
    "guardian_restart_attempts",
    "guardian_incidents_open",
    "guardian_uptime_seconds",
    "guardian_event_loop_lag_seconds",
    "guardian_overloaded",
    "guardian_check_lateness_p99_seconds",
    "guardian_check_duration_seconds",
    "guardian_check_failures",
    "guardian_restarts",
    "guardian_remediations",
    "guardian_incidents",
)
REMEDIATION_OUTCOMES: Final = {
    RecoveryKind.REMEDIATION_SUCCEEDED: "succeeded",
    RecoveryKind.REMEDIATION_FAILED: "failed",
}


def _gauge(name: str, doc: str, labels: Iterable[str] = ()) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=list(labels))


class StateCollector(Collector):
    """Gauges computed from the view at scrape time."""

    def __init__(self, view: GuardianView) -> None:
        self.view = view

    def collect(self) -> Iterable[Metric]:
        view = self.view
        results = view.state.results()
        critical = {t.name: t.critical for t in view.config.targets}
        yield from self._targets(results, critical)
        yield from self._checks(results)
        yield from self._system(results)
        yield from self._comfyui(results)
        yield from self._recovery()
        yield from self._overload()
        incidents = _gauge("guardian_incidents_open", "Incidents not yet resolved")
        incidents.add_metric([], len(view.incidents(10_000, False)))
        yield incidents
        up = _gauge("guardian_uptime_seconds", "Seconds since Guardian started")
        started = view.started_at
        if started is not None:
            up.add_metric([], max(0.0, (datetime.now(UTC) - started).total_seconds()))
        yield up

    def _targets(
        self, results: list[CheckResult], critical: dict[str, bool]
    ) -> Iterable[Metric]:
        up = _gauge("guardian_target_up", "1 unless the target is failing", ["target", "critical"])
        health = _gauge(
            "guardian_target_health",
            "-1 unknown, 0 ok, 1 degraded, 2 failed",
            ["target"],
        )
        by_target: dict[str, list[Status]] = {name: [] for name in critical}
        for r in results:
            by_target.setdefault(r.target, []).append(r.status)
        for name, statuses in by_target.items():
            if not statuses:
                health.add_metric([name], -1)
                continue
            status = worst(statuses)
            crit = "true" if critical.get(name, True) else "false"
            up.add_metric([name, crit], 0 if status is Status.FAILED else 1)
            health.add_metric([name], max(0, CHECK_STATUS_CODE[status]))
        yield up
        yield health

    def _checks(self, results: list[CheckResult]) -> Iterable[Metric]:
        labels = ["target", "check", "kind"]
        status = _gauge("guardian_check_status", "-1 skipped, 0 ok, 1 degraded, 2 failed", labels)
        failing = _gauge(
            "guardian_check_failing",
            "1 while the latest result is degraded/failed, by reason class",
            [*labels, "reason_class"],
        )
        last = _gauge(
            "guardian_check_last_run_timestamp_seconds", "When the check last finished", labels
        )
        for r in results:
            key = [r.target, r.check, r.kind]
            status.add_metric(key, CHECK_STATUS_CODE[r.status])
            last.add_metric(key, r.finished.timestamp())
            if r.status in (Status.DEGRADED, Status.FAILED):
                failing.add_metric([*key, readings.classify_reason(r.reason)], 1)
        yield status
        yield failing
        yield last

    def _system(self, results: list[CheckResult]) -> Iterable[Metric]:
        disk_free = _gauge("guardian_disk_free_bytes", "Free disk space", ["path"])
        disk_total = _gauge("guardian_disk_total_bytes", "Disk size", ["path"])
        mem_avail = _gauge("guardian_memory_available_bytes", "Available system memory")
        mem_total = _gauge("guardian_memory_total_bytes", "Total system memory")
        util = _gauge("guardian_gpu_utilization_ratio", "GPU busy fraction, 0..1", ["gpu"])
        used = _gauge("guardian_gpu_memory_used_bytes", "GPU memory used", ["gpu"])
        total = _gauge("guardian_gpu_memory_total_bytes", "GPU memory size", ["gpu"])
        temp = _gauge("guardian_gpu_temperature_celsius", "GPU temperature", ["gpu"])
        paths: set[str] = set()
        gpus: set[str] = set()
        memory_done = False
        for r in results:
            v = r.values
            if r.kind == "disk":
                totals = readings.indexed(v, "total_gb")
                for path, gb in readings.indexed(v, "free_gb").items():
                    if path in paths:
                        continue
                    paths.add(path)
                    disk_free.add_metric([path], gb * readings.GIB)
                    if path in totals:
                        disk_total.add_metric([path], totals[path] * readings.GIB)
            elif r.kind == "memory" and not memory_done:
                avail, tot = readings.number(v.get("available_mb")), readings.number(
                    v.get("total_mb")
                )
                if avail is not None:
                    mem_avail.add_metric([], avail * readings.MIB)
                    memory_done = True
                if tot is not None:
                    mem_total.add_metric([], tot * readings.MIB)
            elif r.kind == "gpu":
                for idx, g in readings.gpus(v).items():
                    if idx in gpus:
                        continue
                    gpus.add(idx)
                    for family, field, scale in (
                        (util, "util_percent", 0.01),
                        (used, "mem_used_mb", readings.MIB),
                        (total, "mem_total_mb", readings.MIB),
                        (temp, "temp_c", 1.0),
                    ):
                        value = g.get(field)
                        if isinstance(value, float):
                            family.add_metric([idx], value * scale)
        yield from (disk_free, disk_total, mem_avail, mem_total, util, used, total, temp)

    def _comfyui(self, results: list[CheckResult]) -> Iterable[Metric]:
        online = _gauge("guardian_comfyui_online", "ComfyUI answered its API", ["target"])
        running = _gauge("guardian_comfyui_queue_running", "Prompts running", ["target"])
        pending = _gauge("guardian_comfyui_queue_pending", "Prompts waiting", ["target"])
        free = _gauge("guardian_comfyui_vram_free_bytes", "Free VRAM", ["target", "device"])
        total = _gauge("guardian_comfyui_vram_total_bytes", "VRAM size", ["target", "device"])
        busy = _gauge("guardian_comfyui_busy", "1 while ComfyUI runs a prompt", ["target"])
        age = _gauge(
            "guardian_comfyui_running_seconds", "How long the running prompt has run", ["target"]
        )
        seen: set[str] = set()
        for r in results:
            if r.kind != "comfyui" or r.target in seen:
                continue
            seen.add(r.target)
            v = r.values
            online.add_metric([r.target], 1 if v.get("online") is True else 0)
            if isinstance(v.get("busy"), bool):
                busy.add_metric([r.target], 1 if v.get("busy") else 0)
                seconds = readings.number(v.get("running_for_s"))
                age.add_metric([r.target], seconds or 0.0)
            for family, key in ((running, "queue_running"), (pending, "queue_pending")):
                n = readings.number(v.get(key))
                if n is not None:
                    family.add_metric([r.target], n)
            for family, key in ((free, "vram_free_mb"), (total, "vram_total_mb")):
                for device, mb in readings.indexed(v, key).items():
                    family.add_metric([r.target, device], mb * readings.MIB)
        yield from (online, running, pending, free, total, busy, age)

    def _overload(self) -> Iterable[Metric]:
        """Guardian's own lateness: loop lag, overload flag, check start lateness."""
        monitor = self.view.overload
        if monitor is None:
            return
        h = monitor.histogram()
        lag = HistogramMetricFamily(
            "guardian_event_loop_lag_seconds",
            "How late Guardian's check loop woke up (its own overload, not a target's)",
        )
        lag.add_metric(
            [], [(_le(bound), float(n)) for bound, n in h.buckets], sum_value=h.total
        )
        yield lag
        flag = _gauge("guardian_overloaded", "1 while Guardian itself is falling behind")
        flag.add_metric([], 1 if monitor.overloaded else 0)
        yield flag
        lateness = _gauge(
            "guardian_check_lateness_p99_seconds",
            "99th percentile of how late checks started (last 1000 runs each)",
            ["target", "check"],
        )
        for target, check, p99 in monitor.lateness_p99():
            lateness.add_metric([target, check], p99)
        yield lateness

    def _recovery(self) -> Iterable[Metric]:
        breaker = _gauge("guardian_breaker_open", "1 when restarts gave up", ["target"])
        attempts = _gauge(
            "guardian_restart_attempts", "Restart attempts in the current window", ["target"]
        )
        for target, info in self.view.recovery_snapshot().items():
            breaker.add_metric([target], 1 if info.get("breaker_open") is True else 0)
            n = readings.number(info.get("attempts"))
            if n is not None:
                attempts.add_metric([target], n)
        yield breaker
        yield attempts


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)


class Metrics:
    """All of Guardian's metrics on one private registry, subscribed to the view's bus."""

    def __init__(
        self, view: GuardianView, *, process: bool = True, max_age: float = 1.0
    ) -> None:
        # ``*_created`` series only double the exposition; Guardian's counters start at 0
        # with the process (process_start_time_seconds says when). Process-wide setting.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = CollectorRegistry()
        self.registry.register(StateCollector(view))
        if process:
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)
        self.check_duration = Histogram(
            "guardian_check_duration_seconds",
            "How long checks take",
            ["target", "check"],
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.check_failures = Counter(
            "guardian_check_failures",
            "Failed check results by reason class",
            ["target", "check", "reason_class"],
            registry=self.registry,
        )
        self.restarts = Counter(
            "guardian_restarts",
            "Restarts Guardian performed",
            ["target", "outcome"],
            registry=self.registry,
        )
        self.remediations = Counter(
            "guardian_remediations",
            "Remediation ladder runs by last rung and outcome",
            ["target", "action", "outcome"],
            registry=self.registry,
        )
        self.incidents = Counter(
            "guardian_incidents", "Incident transitions", ["transition"], registry=self.registry
        )
        # Series exist from the start (at 0) so increase()/rate() see the first event.
        for transition in IncidentTransition:
            self.incidents.labels(transition.value)
        for target in view.config.targets:
            for check in target.checks:
                self.check_duration.labels(target.name, check.check_name)
            if target.service is not None:
                for outcome in RESTART_OUTCOMES.values():
                    self.restarts.labels(target.name, outcome)
        # A rendered exposition is reused until any event arrives or ``max_age`` passes:
        # rendering ~500 samples costs milliseconds, so bursts of scrapes (several
        # Prometheus servers, dashboards polling) stay cheap, and nothing goes stale
        # because every state change is an event.
        self.max_age = max_age
        self._generation = 0
        self._cache: tuple[int, float, bytes] | None = None
        self._unsubscribe = view.state.bus.subscribe(self.on_event)

    def on_event(self, event: Event) -> None:
        self._generation += 1
        if isinstance(event, CheckResult):
            self.check_duration.labels(event.target, event.check).observe(max(0.0, event.duration))
            if event.status is Status.FAILED:
                reason_class = readings.classify_reason(event.reason)
                self.check_failures.labels(event.target, event.check, reason_class).inc()
        elif isinstance(event, RecoveryEvent):
            outcome = RESTART_OUTCOMES.get(event.kind)
            if outcome is not None:
                self.restarts.labels(event.target, outcome).inc()
            done = REMEDIATION_OUTCOMES.get(event.kind)
            if done is not None:
                action = str(event.values.get("action") or "none")
                self.remediations.labels(event.target, action, done).inc()
        elif isinstance(event, IncidentEvent):
            self.incidents.labels(str(event.transition)).inc()

    def render(self) -> tuple[bytes, str]:
        """The exposition body and its content type."""
        now = time.monotonic()
        cached = self._cache
        if cached is not None and cached[0] == self._generation and now - cached[1] < self.max_age:
            return cached[2], CONTENT_TYPE_LATEST
        body = generate_latest(self.registry)
        self._cache = (self._generation, now, body)
        return body, CONTENT_TYPE_LATEST

    def close(self) -> None:
        self._unsubscribe()
