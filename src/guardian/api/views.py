"""The API's answers, built from the cached state over the kinds' declared readings.

Builders read only the cached :class:`~guardian.core.state.State` and the view's snapshots:
a health request never runs a check, so it answers in microseconds even while a check
hangs on a dead ComfyUI. What a kind contributes (a service state, a health section, its
readings by name and index) comes from :mod:`guardian.checks.registry`; the shapes they
fill are :mod:`guardian.api.models`.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from guardian.api.context import GuardianView
from guardian.api.models import (
    HISTORY_POINTS,
    CheckModel,
    CheckView,
    ComfyUIDevice,
    ComfyUIHealth,
    ComfyUIQueue,
    DiskHealth,
    GpuHealth,
    GuardianHealth,
    HealthResponse,
    HistoryPoint,
    Incident,
    IncidentDetail,
    MemoryHealth,
    RecoveryInfo,
    ServiceHealth,
    StatusResponse,
    SystemHealth,
    TargetHealth,
    TargetStatus,
    TargetUptime,
    TargetView,
    UptimeBars,
    UptimeResponse,
    UptimeWindow,
)
from guardian.api.queue import queue_health
from guardian.checks.registry import spec
from guardian.core.result import CheckResult, Status, Value, number, worst
from guardian.core.state import Health
from guardian.support.escape import bounded
from guardian.uptime.store import WINDOWS, Counts


def uptime(view: GuardianView, now: datetime) -> float:
    started = view.started_at
    return max(0.0, (now - started).total_seconds()) if started is not None else 0.0


def check_model(r: CheckResult) -> CheckModel:
    return CheckModel(
        target=r.target,
        check=r.check,
        kind=r.kind,
        status=r.status,
        reason=bounded(r.reason),
        values={k: bounded(v) if isinstance(v, str) else v for k, v in r.values.items()},
        started=r.started,
        finished=r.finished,
        duration=r.duration,
        startup=r.startup,
    )


def target_summary(results: list[CheckResult]) -> tuple[TargetStatus, str]:
    """The target's worst status and the reasons of the checks that have it."""
    if not results:
        return "unknown", "no results yet"
    status = worst(r.status for r in results)
    if all(r.status is Status.SKIPPED for r in results):
        return "skipped", bounded("; ".join(f"{r.check}: {r.reason}" for r in results if r.reason))
    chosen = [r for r in results if r.status is status]
    reason = "; ".join(f"{r.check}: {r.reason}" if r.reason else r.check for r in chosen)
    return status.value, bounded(reason)


def _recovery(info: Mapping[str, Any] | None) -> RecoveryInfo | None:
    if info is None:
        return None
    try:
        return RecoveryInfo.model_validate(dict(info))
    except ValidationError:
        return RecoveryInfo()


def _service(
    results: list[CheckResult], status: TargetStatus, recovery: RecoveryInfo | None
) -> ServiceHealth:
    state, pid = {"ok": "up", "degraded": "up", "failed": "down"}.get(status, "unknown"), None
    for r in results:
        if spec(r.kind).service_state:
            raw_state, raw_pid = r.values.get("state"), r.values.get("pid")
            if isinstance(raw_state, str) and raw_state:
                state = raw_state
            if isinstance(raw_pid, int) and not isinstance(raw_pid, bool):
                pid = raw_pid
            break
    rec = recovery or RecoveryInfo()
    return ServiceHealth(
        state=state,
        pid=pid if pid is not None else rec.pid,
        restarts=rec.attempts,
        breaker_open=rec.breaker_open,
        last_restart=rec.last_restart,
        consecutive_failures=rec.consecutive_failures,
    )


def _int(value: Value | None) -> int | None:
    n = number(value)
    return int(n) if n is not None else None


def _str(value: object) -> str | None:
    return bounded(value) if isinstance(value, str) else None


def _comfyui(r: CheckResult) -> ComfyUIHealth:
    """The ``comfyui`` section from the kind's declared readings."""
    items = _by_index(r)
    v = items.pop("", {})
    devices = []
    for i in sorted(items, key=lambda s: (len(s), s)):
        d = items[i]
        free, total = number(d.get("vram_free_mb")), number(d.get("vram_total_mb"))
        name, kind = _str(d.get("device_name")), _str(d.get("device_type"))
        if free is None and total is None and name is None and kind is None:
            continue  # nothing readable about this device
        devices.append(ComfyUIDevice(
            index=i, name=name, type=kind, vram_free_mb=free, vram_total_mb=total
        ))
    return ComfyUIHealth(
        target=r.target,
        online=v.get("online") is True,
        busy=v.get("busy") is True,
        running_prompt_id=_str(v.get("running_prompt_id")),
        running_for_s=number(v.get("running_for_s")),
        status=r.status.value,
        reason=bounded(r.reason),
        version=_str(v.get("comfyui_version")),
        cuda=any(d.type is not None and d.type.lower() == "cuda" for d in devices),
        devices=devices,
        queue=ComfyUIQueue(
            running=_int(v.get("queue_running")), pending=_int(v.get("queue_pending"))
        ),
        checked_at=r.finished,
    )


def _by_index(r: CheckResult) -> dict[str, dict[str, Value]]:
    """The kind's declared readings of one result, grouped by item (``""``: no index)."""
    items: dict[str, dict[str, Value]] = {}
    for reading in spec(r.kind).readings:
        for index, value in reading.of(r.values).items():
            items.setdefault(index, {})[reading.name] = value
    return items


def _numbers(fields: Mapping[str, Value], *names: str) -> dict[str, float | None]:
    return {name: number(fields.get(name)) for name in names}


def _system(results: list[CheckResult]) -> SystemHealth:
    """The host kinds' readings, by the section each kind declares; the first wins."""
    system = SystemHealth()
    seen_paths: set[str] = set()
    seen_gpus: set[str] = set()
    for r in results:
        section = spec(r.kind).health
        if section is None:
            continue
        items = _by_index(r)
        if section == "disks":
            for path, fields in items.items():
                disk = _numbers(fields, "free_gb", "total_gb", "free_percent")
                measured = disk["free_gb"] is not None or disk["total_gb"] is not None
                if path not in seen_paths and measured:
                    seen_paths.add(path)
                    system.disks.append(DiskHealth(path=path, **disk))
        elif section == "memory" and system.memory is None:
            system.memory = MemoryHealth(
                **_numbers(items.get("", {}), "available_mb", "total_mb", "used_percent")
            )
        elif section == "gpus":
            for idx, fields in sorted(items.items(), key=lambda kv: (len(kv[0]), kv[0])):
                name = fields.get("name")
                nums = {k: n for k, n in _numbers(
                    fields, "util_percent", "mem_used_mb", "mem_total_mb", "temp_c"
                ).items() if n is not None}
                if idx in seen_gpus or not (nums or isinstance(name, str)):
                    continue
                seen_gpus.add(idx)
                system.gpus.append(
                    GpuHealth(index=idx, name=name if isinstance(name, str) else None, **nums)
                )
    return system


def starting(
    results: list[CheckResult], recovery: Mapping[str, Any] | None, *, reports: bool = True
) -> bool:
    """Whether a target is not up yet without having failed: a restart in progress, no
    result yet (from a target with checks: ``reports``), only results from before its
    last (re)start ended (the good ones from before a restart, until the first probe of
    the new process), a failure in its startup phase."""
    if recovery is not None and recovery.get("restarting") is True:
        return True
    if not results:
        return reports
    up_since = recovery.get("up_since_mono") if recovery is not None else None
    if isinstance(up_since, float) and all(
        r.started_mono is not None and r.started_mono < up_since for r in results
    ):
        return True
    return any(r.startup and r.status is Status.FAILED for r in results)


def stack_health(
    view: GuardianView, snapshot: Mapping[str, Mapping[str, Any]] | None = None
) -> tuple[Health, set[str]]:
    """The stack's health and the targets not up yet.

    Never healthy while something is not up yet: a target restarting (its latest results
    may still be the good ones from before) makes a healthy stack degraded; a critical
    target's startup is degraded too (:func:`guardian.core.state.aggregate`), only a critical
    target's real failure is unhealthy.
    """
    snapshot = view.recovery_snapshot() if snapshot is None else snapshot
    with_checks = {t.name for t in view.config.targets if any(c.enabled for c in t.checks)}
    not_up = {
        name for name, results in _by_target(view).items()
        if starting(results, snapshot.get(name), reports=name in with_checks)
    }
    health = view.state.overall()
    if health == "healthy" and not_up:
        health = "degraded"
    return health, not_up


def _by_target(view: GuardianView) -> dict[str, list[CheckResult]]:
    grouped: dict[str, list[CheckResult]] = {t.name: [] for t in view.config.targets}
    for r in view.state.results():
        grouped.setdefault(r.target, []).append(r)
    return grouped


def build_health(view: GuardianView, now: datetime) -> HealthResponse:
    grouped = _by_target(view)
    snapshot = view.recovery_snapshot()
    critical = {t.name: t.critical for t in view.config.targets}
    with_service = {t.name for t in view.config.targets if t.service is not None}
    targets: dict[str, TargetHealth] = {}
    services: dict[str, ServiceHealth] = {}
    comfyui: ComfyUIHealth | None = None
    overall, not_up = stack_health(view, snapshot)
    for name, results in grouped.items():
        status, reason = target_summary(results)
        targets[name] = TargetHealth(
            status=status,
            reason=reason,
            critical=critical.get(name, True),
            starting=name in not_up,
            checked_at=max((r.finished for r in results), default=None),
        )
        if name in with_service or name in snapshot:
            services[name] = _service(results, status, _recovery(snapshot.get(name)))
        if comfyui is None:
            found = next((r for r in results if spec(r.kind).health == "comfyui"), None)
            if found is not None:
                comfyui = _comfyui(found)
    all_results = [r for rs in grouped.values() for r in rs]
    problems = view.state.problems
    return HealthResponse(
        status=overall,
        timestamp=now,
        uptime_seconds=round(uptime(view, now), 3),
        services=services,
        comfyui=comfyui,
        system=_system(all_results),
        targets=targets,
        guardian=GuardianHealth(ok=not problems, problems=problems),
        queues={name: queue_health(q) for name, q in view.queue_views().items()},
    )


def incident_model(data: Mapping[str, Any], detail: bool = False) -> Incident | None:
    """Validate one incident dict from the view; None (skipped) when malformed."""
    try:
        return (IncidentDetail if detail else Incident).model_validate(dict(data))
    except ValidationError:
        return None


def build_status(view: GuardianView, now: datetime) -> StatusResponse:
    grouped = _by_target(view)
    snapshot = view.recovery_snapshot()
    configs = {t.name: t for t in view.config.targets}
    overall, not_up = stack_health(view, snapshot)
    queues = view.queue_views()
    targets: list[TargetView] = []
    for name, results in grouped.items():
        cfg = configs.get(name)
        status, reason = target_summary(results)
        checks = [
            CheckView(
                **check_model(r).model_dump(),
                history=[
                    HistoryPoint(status=h.status, duration=h.duration, finished=h.finished)
                    for h in view.state.history(name, r.check)[-HISTORY_POINTS:]
                ],
            )
            for r in results
        ]
        targets.append(
            TargetView(
                name=name,
                description=cfg.description if cfg is not None else None,
                critical=cfg.critical if cfg is not None else True,
                status=status,
                reason=reason,
                has_service=cfg is not None and cfg.service is not None,
                starting=name in not_up,
                recovery=_recovery(snapshot.get(name)),
                checks=checks,
                queue=queue_health(queues[name]) if name in queues else None,
            )
        )
    open_incidents = [
        m for m in (incident_model(i) for i in view.incidents(100, False)) if m is not None
    ]
    return StatusResponse(
        status=overall,
        timestamp=now,
        uptime_seconds=round(uptime(view, now), 3),
        targets=targets,
        incidents_open=open_incidents,
    )


def build_uptime(view: GuardianView, now: datetime) -> UptimeResponse:
    """Uptime of every configured target from the persisted buckets."""
    counts = view.uptime_counts
    if counts is None:  # Guardian's own trouble, not the targets': say so, don't fail
        return UptimeResponse(timestamp=now, available=False, bucket_seconds=0, targets={})
    slots = 48
    windows, bars = counts.windows(now), counts.bar_arrays(now, slots=slots)
    first = counts.first_seen()
    empty = {name: Counts() for name in WINDOWS}
    no_data = [0] * slots
    targets: dict[str, TargetUptime] = {}
    for t in view.config.targets:
        per = windows.get(t.name, {})
        ok, total, restarts = bars.targets.get(t.name, (no_data, no_data, no_data))
        targets[t.name] = TargetUptime.model_construct(  # our own ints: no validation pass
            since=first.get(t.name),
            windows={
                name: UptimeWindow(ok=c.ok, total=c.total, percent=c.percent, restarts=c.restarts)
                for name, c in {**empty, **per}.items()
            },
            bars=UptimeBars.model_construct(
                start=bars.start, seconds=bars.seconds, ok=ok, total=total, restarts=restarts),
        )
    return UptimeResponse(timestamp=now, bucket_seconds=counts.bucket_seconds, targets=targets)
