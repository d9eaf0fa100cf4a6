"""A realistic stack for the API tests: panel + ComfyUI services, disk, system checks."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from guardian.api.app import create_app
from guardian.api.context import StaticView
from guardian.config.load import parse_config
from guardian.config.schema import Config
from guardian.core.result import CheckResult, Condition, ReasonClass, Status, Value
from guardian.core.state import State
from guardian.engine.lateness import LatenessWindow
from guardian.engine.overload import LoopLagMonitor

TOKEN = "s3cret-token"

CONFIG = """
[api]
token = "{token}"

[[targets]]
name = "panel"
service = {{ name = "OrchestratorPanel" }}
[[targets.checks]]
kind = "http"
url = "http://127.0.0.1:3000/api/health"
[[targets.checks]]
kind = "service"

[[targets]]
name = "comfyui"
service = {{ name = "OrchestratorComfyUI" }}
[[targets.checks]]
kind = "comfyui"
[[targets.checks]]
kind = "service"

[[targets]]
name = "disk"
[[targets.checks]]
kind = "disk"
paths = ["/", "/data"]

[[targets]]
name = "system"
critical = false
[[targets.checks]]
kind = "memory"
[[targets.checks]]
kind = "gpu"
"""

T0 = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)

COMFY_VALUES: dict[str, Value] = {
    "online": True,
    "comfyui_version": "0.3.40",
    "devices": 1,
    "device_name.0": "cuda:0 NVIDIA GeForce RTX 4090 : cudaMallocAsync",
    "device_type.0": "cuda",
    "vram_total_mb.0": 24563.5,
    "vram_free_mb.0": 20000.0,
    "queue_running": 1,
    "queue_pending": 2,
}
DISK_VALUES: dict[str, Value] = {
    "free_gb./": 120.5,
    "free_percent./": 40.0,
    "total_gb./": 300.0,
    "free_gb./data": 900.0,
    "total_gb./data": 2000.0,
}
MEMORY_VALUES: dict[str, Value] = {
    "available_mb": 8192.0, "total_mb": 32768.0, "used_percent": 75.0
}
GPU_VALUES: dict[str, Value] = {
    "backend": "nvml",
    "gpu_count": 1,
    "gpu0.name": "NVIDIA GeForce RTX 4090",
    "gpu0.util_percent": 37,
    "gpu0.vram_used_mb": 4563.5,
    "gpu0.vram_total_mb": 24563.5,
    "gpu0.temp_c": 61,
}


def make_config(token: str = TOKEN) -> Config:
    return parse_config(CONFIG.format(token=token))


def result(
    target: str,
    check: str,
    status: Status = Status.OK,
    reason: str = "",
    values: Mapping[str, Value] | None = None,
    *,
    kind: str | None = None,
    duration: float = 0.01,
    at: datetime = T0,
    condition: Condition | None = None,
    reason_class: ReasonClass | None = None,
) -> CheckResult:
    return CheckResult(
        target=target,
        check=check,
        kind=kind or check,
        status=status,
        reason=reason,
        values=dict(values or {}),
        started=at,
        finished=at + timedelta(seconds=duration),
        duration=duration,
        condition=condition,
        reason_class=reason_class,
    )


def healthy_results() -> list[CheckResult]:
    return [
        result("panel", "http", values={"status_code": 200, "response_ms": 12.0}),
        result("panel", "service", reason="service running",
               values={"state": "running", "pid": 4242}),
        result("comfyui", "comfyui", reason="ComfyUI 0.3.40", values=COMFY_VALUES),
        result("comfyui", "service", values={"state": "running", "pid": 777}),
        result("disk", "disk", reason="lowest free 120.5 GB", values=DISK_VALUES),
        result("system", "memory", values=MEMORY_VALUES),
        result("system", "gpu", values=GPU_VALUES),
    ]


def make_view(
    *, token: str = TOKEN, results: list[CheckResult] | None = None, **kwargs: Any
) -> StaticView:
    config = make_config(token)
    state = State(config)
    for r in healthy_results() if results is None else results:
        state.record(r)
    kwargs.setdefault("started_at", T0 - timedelta(hours=1))
    kwargs.setdefault(
        "recovery",
        {
            "panel": {"attempts": 0, "last_restart": None, "breaker_open": False,
                      "consecutive_failures": 0},
            "comfyui": {"attempts": 2, "last_restart": (T0 - timedelta(minutes=5)).isoformat(),
                        "breaker_open": False, "consecutive_failures": 1, "restarting": False},
        },
    )
    kwargs.setdefault("overload", lag_monitor(state))
    return StaticView(config=config, state=state, **kwargs)


def lag_monitor(state: State) -> LoopLagMonitor:
    """A monitor (not started) with a few known lags and one check's start lateness."""
    monitor = LoopLagMonitor(state)
    for at, lag in enumerate((0.002, 0.004, 0.03)):
        monitor.observe(lag, float(at))
    window = LatenessWindow()
    for late in (0.001, 0.002, 0.05):
        window.append(late)
    monitor.watch_lateness(lambda: [("panel", "http", window.p99())])
    return monitor


INCIDENTS: list[dict[str, Any]] = [
    {"id": 1, "target": "panel", "status": "resolved", "severity": "critical",
     "summary": "panel down", "opened_at": "2025-01-01T10:00:00+00:00",
     "escalated_at": None, "resolved_at": "2025-01-01T10:05:00+00:00",
     "failure_count": 3, "flap_count": 0, "report_path": None},
    {"id": 2, "target": "comfyui", "status": "escalated", "severity": "critical",
     "summary": "ComfyUI queue stuck", "opened_at": "2025-01-01T11:00:00+00:00",
     "escalated_at": "2025-01-01T11:02:00+00:00", "resolved_at": None,
     "failure_count": 5, "flap_count": 1, "report_path": "/tmp/r.md",
     "report_markdown": "# Incident 2\n\nqueue stuck"},
]


def client(view: StaticView) -> httpx.AsyncClient:
    app = create_app(view)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1")
