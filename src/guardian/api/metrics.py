"""Prometheus metrics: gauges read at scrape time, counters from events, written cheaply.

Gauges are read from the cached :class:`~guardian.core.state.State` when Prometheus scrapes,
so they can never drift from what ``/api/health`` says. Counters and the duration
histogram are fed by the :class:`~guardian.core.events.EventBus`. Which reading feeds which
gauge is declared by each check kind (its ``READINGS``, listed in
:mod:`guardian.checks.registry`); a reading the check could not take means no sample.
Everything is per :class:`Metrics` instance, so several Guardians, or tests,
never share series.

Why Guardian writes its own families instead of going through ``prometheus_client``'s
collectors: with 1000 targets the exposition has ~23 000 samples, and the library spends
~30 us on each (label validation and escaping, sample tuples, float formatting), all of it
on the API thread, holding the GIL the checks need. Here label sets are escaped once and
kept, counters and histograms are plain lists behind one lock, and a sample is one string
concatenation (bench/bench_metrics.py measures it; bench/results/metrics.md). The text
format is the library's, byte for byte (a test compares the histograms), and ``promtool
check metrics`` vets the output in the tests. The process series come from
:mod:`guardian.api.process_metrics`; ``prometheus_client`` itself is imported only for
:attr:`Metrics.registry` (tests and other in-process readers), never by ``guardian run``.

Encodings (numeric, so they graph and alert with plain comparisons):

* ``guardian_target_health{target}``: -1 unknown (no results yet), 0 ok (or all skipped),
  1 degraded, 2 failed.
* ``guardian_target_up{target,critical}``: 0 when the target's worst status is failed,
  else 1 (no sample before its first result). ``critical`` is ``"true"``/``"false"``.
* ``guardian_check_status{target,check,kind}``: -1 skipped, 0 ok, 1 degraded, 2 failed.
* ``guardian_check_failing{target,check,kind,reason_class}``: 1 while the latest result is
  degraded or failed, with the class its check gave the reason (a fixed set, see
  :data:`~guardian.core.result.REASON_CLASSES`; "other" when it gave none); no sample
  while ok.
* ``guardian_check_failures_total{target,check,reason_class}`` counts failed results.
* ``guardian_restarts_total{target,outcome}``: outcome succeeded, failed or dry_run.
* ``guardian_remediations_total{target,action,outcome}``: remediation ladder runs by their
  last rung (interrupt, free, none) and outcome (succeeded, failed).
* ``guardian_comfyui_prompts_{restored,quarantined}_total{target}``,
  ``guardian_comfyui_prompts_lost_total{target,reason}``: the queue journal's restores.
* ``guardian_comfyui_busy{target}`` 1 while a prompt runs; ``guardian_comfyui_running_seconds``
  how long the running prompt has been seen running.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from itertools import accumulate
from typing import TYPE_CHECKING, Any, Final

from guardian.api.context import GuardianView
from guardian.api.process_metrics import ProcessMetrics
from guardian.api.queue import QueueMetrics
from guardian.checks.registry import REGISTRY
from guardian.core.events import (
    Event,
    IncidentEvent,
    IncidentTransition,
    RecoveryEvent,
    RecoveryKind,
)
from guardian.core.result import CheckResult, Status, number, worst
from guardian.engine.overload import LAG_BUCKETS

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"  # the text format, 0.0.4

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


LABEL_CACHE_MAX: Final = 100_000  # escaped label sets kept; past it the cache starts over
_INF: Final = float("inf")
# ``le`` as prometheus_client wrote them (1 -> "1.0"), so series continue across upgrades.
_BUCKET_LE: Final = (*(repr(float(b)) for b in DURATION_BUCKETS), "+Inf")
_LAG_LE: Final = (*(repr(float(b)) for b in LAG_BUCKETS), "+Inf")


def _escape(value: str) -> str:
    """A label value in the text format: backslash, double quote and newline escaped."""
    if "\\" in value or '"' in value or "\n" in value:
        return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return value


def _num(value: float) -> str:
    if value != value:
        return "NaN"
    if value in (_INF, -_INF):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


class _Labels:
    """Escaped ``{name="value",...}`` strings, made once per label set and reused."""

    def __init__(self) -> None:
        self._by_names: dict[tuple[str, ...], dict[tuple[str, ...], str]] = {}
        self._size = 0

    def table(self, names: tuple[str, ...]) -> dict[tuple[str, ...], str]:
        """The cache for one label-name tuple (values -> text)."""
        found = self._by_names.get(names)
        if found is None:
            found = self._by_names[names] = {}
        return found

    def make(self, names: tuple[str, ...], values: tuple[str, ...]) -> str:
        if self._size >= LABEL_CACHE_MAX:  # bounded even if hostile values keep changing
            for table in self._by_names.values():
                table.clear()
            self._size = 0
        pairs = sorted(zip(names, values, strict=True))  # by name, as prometheus_client
        inner = ",".join(f'{n}="{_escape(v)}"' for n, v in pairs)
        text = self.table(names)[values] = "{" + inner + "}" if inner else ""
        self._size += 1
        return text

    def __call__(self, names: tuple[str, ...], values: tuple[str, ...]) -> str:
        found = self.table(names).get(values)
        return found if found is not None else self.make(names, values)


class _Out:
    """The exposition being written: families (HELP/TYPE once) and their samples."""

    def __init__(self, labels: _Labels) -> None:
        self.parts: list[str] = []
        self.labels = labels

    def family(self, name: str, kind: str, doc: str) -> None:
        doc = doc.replace("\\", "\\\\").replace("\n", "\\n")
        self.parts.append(f"# HELP {name} {doc}\n# TYPE {name} {kind}\n")

    def gauge(self, name: str, doc: str, names: tuple[str, ...] = ()) -> _Family:
        self.family(name, "gauge", doc)
        return _Family(self, name, names)

    def text(self) -> str:
        return "".join(self.parts)


class _Family:
    """One family's samples: ``add((label values), value)``."""

    __slots__ = ("cache", "labels", "names", "parts", "prefix")

    def __init__(self, out: _Out, name: str, names: tuple[str, ...]) -> None:
        self.parts, self.prefix, self.names, self.labels = out.parts, name, names, out.labels
        self.cache = out.labels.table(names)

    def add(self, values: tuple[str, ...], value: float) -> None:
        text = self.cache.get(values)
        if text is None:
            text = self.labels.make(self.names, values)
        self.parts.append(f"{self.prefix}{text} {_SMALL.get(value) or _num(value)}\n")


_SMALL: Final[dict[float, str]] = {-1: "-1.0", 0: "0.0", 1: "1.0", 2: "2.0"}  # codes, flags
_CHECK: Final = ("target", "check", "kind")


def _state(view: GuardianView, out: _Out) -> None:
    """Gauges computed from the view at scrape time."""
    results = view.state.results()
    critical = {t.name: t.critical for t in view.config.targets}
    _targets(out, results, critical)
    _checks(out, results)
    _readings(out, results)
    _recovery(out, view)
    _overload(out, view)
    out.gauge("guardian_incidents_open", "Incidents not yet resolved").add(
        (), len(view.incidents(10_000, False))
    )
    up = out.gauge("guardian_uptime_seconds", "Seconds since Guardian started")
    started = view.started_at
    if started is not None:
        up.add((), max(0.0, (datetime.now(UTC) - started).total_seconds()))


def _targets(out: _Out, results: list[CheckResult], critical: dict[str, bool]) -> None:
    by_target: dict[str, list[Status]] = {name: [] for name in critical}
    for r in results:
        by_target.setdefault(r.target, []).append(r.status)
    up = out.gauge("guardian_target_up", "1 unless the target is failing", ("target", "critical"))
    worst_of = {name: worst(statuses) for name, statuses in by_target.items() if statuses}
    for name, status in worst_of.items():
        crit = "true" if critical.get(name, True) else "false"
        up.add((name, crit), 0 if status is Status.FAILED else 1)
    health = out.gauge(
        "guardian_target_health", "-1 unknown, 0 ok, 1 degraded, 2 failed", ("target",)
    )
    for name in by_target:
        status_or_none = worst_of.get(name)
        health.add(
            (name,), -1 if status_or_none is None else max(0, CHECK_STATUS_CODE[status_or_none])
        )


_STATUS_TEXT: Final = {status: repr(float(code)) for status, code in CHECK_STATUS_CODE.items()}


def _checks(out: _Out, results: list[CheckResult]) -> None:
    labels, append = out.labels, out.parts.append
    cache = labels.table(_CHECK)
    keyed = [((r.target, r.check, r.kind), r) for r in results]
    texts = [cache.get(key) or labels.make(_CHECK, key) for key, _ in keyed]
    out.family("guardian_check_status", "gauge", "-1 skipped, 0 ok, 1 degraded, 2 failed")
    for text, (_, r) in zip(texts, keyed, strict=True):
        append(f"guardian_check_status{text} {_STATUS_TEXT[r.status]}\n")
    failing = out.gauge(
        "guardian_check_failing",
        "1 while the latest result is degraded/failed, by reason class",
        (*_CHECK, "reason_class"),
    )
    for key, r in keyed:
        if r.status in (Status.DEGRADED, Status.FAILED):
            failing.add((*key, r.reason_class or "other"), 1)
    out.family("guardian_check_last_run_timestamp_seconds", "gauge", "When the check last finished")
    for text, (_, r) in zip(texts, keyed, strict=True):
        append(f"guardian_check_last_run_timestamp_seconds{text} {r.finished.timestamp()!r}\n")


def _readings(out: _Out, results: list[CheckResult]) -> None:
    """A gauge per declared reading with a metric, in the registry's order.

    A host kind's gauge is the host's: one series per item, the first result wins. Any
    other kind's is per target (its first result there), labelled ``target``.
    """
    by_kind: dict[str, list[CheckResult]] = {}
    for r in results:
        by_kind.setdefault(r.kind, []).append(r)
    for spec in REGISTRY:
        found = by_kind.get(spec.kind, [])
        if not spec.host:  # the first result of each target
            first: dict[str, CheckResult] = {}
            for r in found:
                first.setdefault(r.target, r)
            found = list(first.values())
        per_target = () if spec.host else ("target",)
        for reading in spec.readings:
            if not reading.metric:
                continue
            indexed = reading.index is not None
            labels = per_target + ((reading.index,) if reading.index else ())
            family = out.gauge(reading.metric, reading.doc, labels)
            seen: set[tuple[str, ...]] = set()
            for r in found:
                for index, n in reading.gauge(r.values).items():
                    key = (() if spec.host else (r.target,)) + ((index,) if indexed else ())
                    if key not in seen:
                        seen.add(key)
                        family.add(key, n)


def _recovery(out: _Out, view: GuardianView) -> None:
    snapshot = view.recovery_snapshot()
    breaker = out.gauge("guardian_breaker_open", "1 when restarts gave up", ("target",))
    for target, info in snapshot.items():
        breaker.add((target,), 1 if info.get("breaker_open") is True else 0)
    attempts = out.gauge(
        "guardian_restart_attempts", "Restart attempts in the current window", ("target",)
    )
    for target, info in snapshot.items():
        n = number(info.get("attempts"))
        if n is not None:
            attempts.add((target,), n)


def _overload(out: _Out, view: GuardianView) -> None:
    """Guardian's own lateness: loop lag, overload flag, check start lateness."""
    monitor = view.overload
    if monitor is None:
        return
    h = monitor.histogram()
    name = "guardian_event_loop_lag_seconds"
    out.family(
        name,
        "histogram",
        "How late Guardian's check loop woke up (its own overload, not a target's)",
    )
    out.parts.extend(
        f'{name}_bucket{{le="{le}"}} {n:.1f}\n'
        for le, (_, n) in zip(_LAG_LE, h.buckets, strict=True)
    )
    out.parts.append(f"{name}_count {h.count:.1f}\n{name}_sum {_num(h.total)}\n")
    out.gauge("guardian_overloaded", "1 while Guardian itself is falling behind").add(
        (), 1 if monitor.overloaded else 0
    )
    lateness = out.gauge(
        "guardian_check_lateness_p99_seconds",
        "99th percentile of how late checks started (last 1000 runs each)",
        ("target", "check"),
    )
    for target, check, p99 in monitor.lateness_p99():
        lateness.add((target, check), p99)


class Metrics:
    """All of Guardian's metrics, subscribed to the view's bus; :meth:`render` for scrapes."""

    def __init__(
        self,
        view: GuardianView,
        *,
        process: bool = True,
        max_age: float = 10.0,
        min_age: float = 1.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.view = view
        self._monotonic = monotonic
        self._labels = _Labels()
        self._lock = threading.Lock()  # events (checks' loop) vs scrapes (API thread)
        # (target, check) -> non-cumulative bucket counts (+Inf last), and the sums.
        self._durations: dict[tuple[str, str], list[int]] = {}
        self._duration_sums: dict[tuple[str, str], float] = {}
        self._failures: dict[tuple[str, str, str], int] = {}
        self._restarts: dict[tuple[str, str], int] = {}
        self._remediations: dict[tuple[str, str, str], int] = {}
        # Series exist from the start (at 0) so increase()/rate() see the first event.
        self._incidents: dict[str, int] = {t.value: 0 for t in IncidentTransition}
        for target in view.config.targets:
            for check in target.checks:
                self._durations[(target.name, check.check_name)] = _empty_histogram()
                self._duration_sums[(target.name, check.check_name)] = 0.0
            if target.service is not None:
                for outcome in RESTART_OUTCOMES.values():
                    self._restarts[(target.name, outcome)] = 0
            if any(c.kind == "comfyui" for c in target.checks):  # the ladder's targets
                for action in ("interrupt", "free"):
                    for done in REMEDIATION_OUTCOMES.values():
                        self._remediations[(target.name, action, done)] = 0
        self._histogram_template: tuple[tuple[tuple[str, str], ...], str] | None = None
        # Label texts and the histogram template of every configured check are made now,
        # at start-up, so the first scrape costs what any other does.
        for target in view.config.targets:
            crit = "true" if target.critical else "false"
            self._labels(("target",), (target.name,))
            self._labels(("target", "critical"), (target.name, crit))
            for check in target.checks:
                self._labels(_CHECK, (target.name, check.check_name, check.kind))
                self._labels(("target", "check"), (target.name, check.check_name))
        self._template(tuple(self._durations))
        # Guardian's own process series, few and fixed (see process_metrics).
        self._process = ProcessMetrics() if process else None
        self._registry: CollectorRegistry | None = None
        # A rendered exposition is reused for ``min_age`` whatever happens (a flood of
        # scrapes renders at most once per ``min_age``), then until an event arrives or
        # ``max_age`` passes (uptime, process figures). Checks run at most once a second,
        # so ``min_age`` of 1 s hides nothing a scraper could have seen.
        self.max_age, self.min_age = max_age, min_age
        self._generation = 0
        self._cache: tuple[int, float, bytes] | None = None
        self._render_lock = threading.Lock()
        self._queue = QueueMetrics()  # guardian_comfyui_prompts_*_total
        self._unsubscribe = view.state.bus.subscribe(self.on_event)

    # ------------------------------------------------------------------ events

    def on_event(self, event: Event) -> None:
        self._generation += 1
        if isinstance(event, CheckResult):
            duration = max(0.0, event.duration)
            key2 = (event.target, event.check)
            with self._lock:
                h = self._durations.get(key2)
                if h is None:
                    h = self._durations[key2] = _empty_histogram()
                h[bisect.bisect_left(DURATION_BUCKETS, duration)] += 1
                self._duration_sums[key2] = self._duration_sums.get(key2, 0.0) + duration
                if event.status is Status.FAILED:
                    key = (event.target, event.check, event.reason_class or "other")
                    self._failures[key] = self._failures.get(key, 0) + 1
        elif isinstance(event, RecoveryEvent):
            self._queue.on_event(event)
            outcome = RESTART_OUTCOMES.get(event.kind)
            done = REMEDIATION_OUTCOMES.get(event.kind)
            with self._lock:
                if outcome is not None:
                    rkey = (event.target, outcome)
                    self._restarts[rkey] = self._restarts.get(rkey, 0) + 1
                if done is not None:
                    action = str(event.values.get("action") or "none")
                    mkey = (event.target, action, done)
                    self._remediations[mkey] = self._remediations.get(mkey, 0) + 1
        elif isinstance(event, IncidentEvent):
            transition = str(event.transition)
            with self._lock:
                self._incidents[transition] = self._incidents.get(transition, 0) + 1

    # ------------------------------------------------------------------ rendering

    def render(self) -> tuple[bytes, str]:
        """The exposition body and its content type."""
        with self._render_lock:  # concurrent scrapes wait for one render, not make many
            now = self._monotonic()
            cached = self._cache
            if cached is not None:
                age = now - cached[1]
                if age < self.min_age or (cached[0] == self._generation and age < self.max_age):
                    return cached[2], CONTENT_TYPE
            generation = self._generation
            body = self.text().encode("utf-8")
            self._cache = (generation, now, body)
            return body, CONTENT_TYPE

    def text(self) -> str:
        """The whole exposition, rendered now (no cache)."""
        own = self.guardian_text()
        return own + self._process.render() if self._process is not None else own

    @property
    def registry(self) -> CollectorRegistry:
        """The exposition as a prometheus_client registry, for in-process readers (tests,
        embedders): parsed from the same text a scrape gets, so the two never disagree.
        The library is imported only here, never by a plain ``guardian run``."""
        if self._registry is None:
            from prometheus_client import CollectorRegistry
            from prometheus_client.parser import text_string_to_metric_families

            metrics = self

            class Parsed:
                def collect(self) -> Iterable[Any]:
                    return text_string_to_metric_families(metrics.text())

            self._registry = CollectorRegistry()
            self._registry.register(Parsed())
        return self._registry

    def guardian_text(self) -> str:
        """Guardian's own families (no process/platform series), rendered now."""
        out = _Out(self._labels)
        _state(self.view, out)
        self._counters(out)
        return out.text()

    def _counters(self, out: _Out) -> None:
        with self._lock:  # copies: the checks' loop keeps counting meanwhile
            durations = [(k, list(v), self._duration_sums[k]) for k, v in self._durations.items()]
            failures: list[tuple[tuple[str, ...], int]] = list(self._failures.items())
            restarts: list[tuple[tuple[str, ...], int]] = list(self._restarts.items())
            remediations: list[tuple[tuple[str, ...], int]] = list(self._remediations.items())
            incidents = list(self._incidents.items())
        name = "guardian_check_duration_seconds"
        out.family(name, "histogram", "How long checks take")
        labels, parts = self._labels, out.parts
        template = self._template(tuple(key for key, _, _ in durations))
        values: list[float] = []
        for _, counts, total in durations:
            values.extend(accumulate(counts))
            values.append(values[-1])  # the count: the +Inf bucket's
            values.append(total)
        parts.append(template % tuple(values))  # one C call for every check's lines
        for fam, doc, names, items in (
            (
                "guardian_check_failures",
                "Failed check results by reason class",
                ("target", "check", "reason_class"),
                failures,
            ),
            ("guardian_restarts", "Restarts Guardian performed", ("target", "outcome"), restarts),
            (
                "guardian_remediations",
                "Remediation ladder runs by last rung and outcome",
                ("target", "action", "outcome"),
                remediations,
            ),
        ):
            out.family(f"{fam}_total", "counter", doc)
            for label_values, n in items:
                parts.append(f"{fam}_total{labels(names, label_values)} {n:.1f}\n")
        self._queue.render(out.family, parts, labels)
        out.family("guardian_incidents_total", "counter", "Incident transitions")
        for transition, n in incidents:
            text = labels(("transition",), (transition,))
            parts.append(f"guardian_incidents_total{text} {n:.1f}\n")

    def _template(self, keys: tuple[tuple[str, str], ...]) -> str:
        """The duration histograms of these checks, in this order, as one format template."""
        made = self._histogram_template
        if made is None or made[0] != keys:
            name = "guardian_check_duration_seconds"
            body = "".join(_histogram_template(name, key) for key in keys)
            made = self._histogram_template = (keys, body)
        return made[1]

    def close(self) -> None:
        self._unsubscribe()


def _histogram_template(name: str, key: tuple[str, str]) -> str:
    """One check's whole histogram as a ``%``-format template over its values: the
    cumulative counts (ints; +Inf last, which is also the count), then the sum. ``%``
    formatting runs every check's lines in one C call at ~2.5x the speed of
    ``str.format``'s numbered fields. Counts print as ``3.0`` and labels sort by name
    (check, le, target), byte for byte as prometheus_client. The template is kept, so the
    ``le`` label sets are not cached."""
    target, check = (_escape(v).replace("%", "%%") for v in key)
    head, tail = f'{name}_bucket{{check="{check}",le="', f'",target="{target}"}} %d.0'
    lines = [f"{head}{le}{tail}" for le in _BUCKET_LE]
    base = f'{{check="{check}",target="{target}"}}'
    lines.append(f"{name}_count{base} %d.0")
    lines.append(f"{name}_sum{base} %r")
    return "\n".join(lines) + "\n"


def _empty_histogram() -> list[int]:
    return [0] * (len(DURATION_BUCKETS) + 1)
