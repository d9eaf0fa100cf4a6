"""The JSON shapes of the API (pydantic, so OpenAPI documents them).

Shapes only: what fills them is :mod:`guardian.api.views`, so a shape can change (and the
OpenAPI document with it) without touching how the figures are read.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from guardian.api.queue import QueueHealth
from guardian.core.result import Status, Value
from guardian.core.state import Health

TargetStatus = Literal["ok", "degraded", "failed", "skipped", "unknown"]
HISTORY_POINTS = 30


class ErrorResponse(BaseModel):
    detail: str


# --------------------------------------------------------------------------- health


class ServiceHealth(BaseModel):
    state: str = Field(description="from the latest service check, else up/down/unknown")
    pid: int | None = None
    restarts: int = Field(0, description="Guardian's restart attempts in the current window")
    breaker_open: bool = False
    last_restart: datetime | None = None
    consecutive_failures: int = 0


class ComfyUIDevice(BaseModel):
    index: str
    name: str | None = None
    type: str | None = None
    vram_free_mb: float | None = None
    vram_total_mb: float | None = None


class ComfyUIQueue(BaseModel):
    running: int | None = None
    pending: int | None = None


class ComfyUIHealth(BaseModel):
    target: str
    online: bool
    busy: bool = Field(False, description="a prompt is running (a state, not a failure)")
    running_prompt_id: str | None = None
    running_for_s: float | None = Field(None, description="age of the running prompt")
    status: TargetStatus
    reason: str
    version: str | None = None
    cuda: bool
    devices: list[ComfyUIDevice]
    queue: ComfyUIQueue
    checked_at: datetime


class DiskHealth(BaseModel):
    path: str
    free_gb: float | None = None
    total_gb: float | None = None
    free_percent: float | None = None


class MemoryHealth(BaseModel):
    available_mb: float | None = None
    total_mb: float | None = None
    used_percent: float | None = None


class GpuHealth(BaseModel):
    index: str
    name: str | None = None
    util_percent: float | None = None
    mem_used_mb: float | None = None
    mem_total_mb: float | None = None
    temp_c: float | None = None


class SystemHealth(BaseModel):
    disks: list[DiskHealth] = Field(default_factory=list)
    memory: MemoryHealth | None = None
    gpus: list[GpuHealth] = Field(default_factory=list)


class TargetHealth(BaseModel):
    status: TargetStatus
    reason: str
    critical: bool
    starting: bool = Field(
        False, description="not up yet: no result yet, in its startup phase or restarting"
    )
    checked_at: datetime | None = None


class GuardianHealth(BaseModel):
    """Guardian's own trouble, kept apart from the targets' health (it is never theirs)."""

    ok: bool
    problems: dict[str, str] = Field(default_factory=dict)


class HealthResponse(BaseModel):
    status: Health
    timestamp: datetime
    uptime_seconds: float
    services: dict[str, ServiceHealth]
    comfyui: ComfyUIHealth | None
    system: SystemHealth
    targets: dict[str, TargetHealth]
    guardian: GuardianHealth = Field(default_factory=lambda: GuardianHealth(ok=True))
    queues: dict[str, QueueHealth] = Field(
        default_factory=dict, description="per ComfyUI target: its queue journal")


class Probe(BaseModel):
    status: str
    ready: bool | None = None


# --------------------------------------------------------------------------- status


class HistoryPoint(BaseModel):
    status: Status
    duration: float
    finished: datetime


class CheckModel(BaseModel):
    target: str
    check: str
    kind: str
    status: Status
    reason: str
    values: dict[str, Value]
    started: datetime
    finished: datetime
    duration: float
    startup: bool = Field(False, description="the target was in its startup phase")


class CheckView(CheckModel):
    history: list[HistoryPoint] = Field(description=f"the last {HISTORY_POINTS} results")


class RecoveryInfo(BaseModel):
    attempts: int = Field(0, description="restart attempts in the breaker's window")
    last_restart: datetime | None = None
    breaker_open: bool = False
    consecutive_failures: int = 0
    restarting: bool = False
    next_allowed_at: datetime | None = None
    pid: int | None = Field(None, description="the process's pid where the backend knows it")


class TargetView(BaseModel):
    name: str
    description: str | None = None
    critical: bool
    status: TargetStatus
    reason: str
    has_service: bool
    starting: bool = Field(
        False, description="not up yet: no result yet, in its startup phase or restarting"
    )
    recovery: RecoveryInfo | None
    checks: list[CheckView]
    queue: QueueHealth | None = Field(None, description="the ComfyUI queue journal, if any")


class TimelineEntry(BaseModel):
    time: datetime
    kind: str = Field(description="opened, escalated, resolved or a recovery event kind")
    attempt: int = 0
    reason: str = ""
    detail: str = ""


class Incident(BaseModel):
    id: int
    target: str
    status: str
    severity: str = ""
    summary: str = ""
    opened_at: datetime | None = None
    escalated_at: datetime | None = None
    resolved_at: datetime | None = None
    failure_count: int = 0
    flap_count: int = 0
    report_path: str | None = None
    timeline: list[TimelineEntry] = Field(
        default_factory=list, description="opened, recovery actions, escalated, resolved"
    )


class IncidentDetail(Incident):
    report_markdown: str | None = None


class IncidentList(BaseModel):
    incidents: list[Incident]


class StatusResponse(BaseModel):
    status: Health
    timestamp: datetime
    uptime_seconds: float
    targets: list[TargetView]
    incidents_open: list[Incident]


class RestartResponse(BaseModel):
    """202: the restart is accepted (queued, or joined to the one in flight), not done."""

    target: str
    state: Literal["queued", "coalesced", "when_idle"] = Field(
        description="queued: started now; coalesced: joined the restart already in flight;"
        " when_idle: starts once the running ComfyUI prompt has finished")
    id: int | None = Field(None, description="the restart's number in this Guardian run"
                           " (the same for every request coalesced into it)")
    message: str
    watch: str = Field(description="where to follow it: the target's recovery in this"
                       " resource (restarting, last_restart, attempts)")


class RunChecksResponse(BaseModel):
    status: Health
    results: list[CheckModel]


# --------------------------------------------------------------------------- uptime


class UptimeWindow(BaseModel):
    ok: int
    total: int
    percent: float | None = Field(description="None without any counted result")
    restarts: int = Field(0, description="restarts Guardian started in the window")


class UptimeBars(BaseModel):
    """The history bar as arrays (slot i starts at ``start + i * seconds``): 48 slots of
    1000 targets stay small ints, not 48 000 objects."""

    start: datetime = Field(description="start of the first (oldest) slot")
    seconds: int = Field(description="length of each slot")
    ok: list[int] = Field(description="results up per slot")
    total: list[int] = Field(description="results counted per slot (0: no data)")
    restarts: list[int] = Field(description="restarts Guardian started per slot")


class TargetUptime(BaseModel):
    windows: dict[str, UptimeWindow] = Field(description="24h, 7d, 30d")
    since: datetime | None = Field(None, description="oldest data kept: a window reaching "
                                   "further back counts from here")
    bars: UptimeBars = Field(description="the last 24 h in equal slots, oldest first")


class UptimeResponse(BaseModel):
    timestamp: datetime
    available: bool = Field(True, description="false when Guardian has no store open")
    bucket_seconds: int
    targets: dict[str, TargetUptime]
