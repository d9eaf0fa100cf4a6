"""The ``comfyui`` check: server health with hung-queue and memory-pressure detection.

It reads ``/system_stats`` (online, versions, RAM, every device's VRAM) and ``/queue``
(running/pending) through :class:`~guardian.checks.comfyui.client.ComfyUIClient`. A ComfyUI
whose executor is wedged still answers HTTP, so the queue is tracked across runs: the same
prompt running too long with no progress, or prompts pending while nothing runs, fails the
check with a condition the remediation ladder treats.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, model_validator

from guardian.checks.base import Check, CheckConfigBase, CheckContext, TargetUrl
from guardian.checks.comfyui.client import ComfyUIClient, ComfyUIError, QueueItem
from guardian.checks.comfyui.progress import ProgressProbe, ProgressSample, judge
from guardian.core.result import Condition, Outcome, Reading, Value
from guardian.services.process.backend import MARKER
from guardian.support.logscan import failed_imports, output_of_last_start

DEFAULT_COMFYUI_URL = "http://127.0.0.1:8188"


class ComfyUICheckConfig(CheckConfigBase):
    """``/system_stats`` + ``/queue``: online, versions, busy, stuck jobs, memory pressure."""

    kind: Literal["comfyui"] = "comfyui"
    url: TargetUrl = DEFAULT_COMFYUI_URL
    vram_free_min_mb: float | None = Field(
        1024, ge=0, le=1e9, description="idle with less free VRAM on any GPU: memory pressure"
    )
    vram_critical_mb: float | None = Field(
        256, ge=0, le=1e9, description="less free VRAM than this: memory critical, even busy"
    )
    ram_free_min_mb: float | None = Field(
        None, ge=0, le=1e9, description="idle with less free RAM: memory pressure"
    )
    ram_critical_mb: float | None = Field(
        None, ge=0, le=1e9, description="less free RAM than this: memory critical, even busy"
    )
    leak_trend_runs: int = Field(
        5, ge=2, le=1000, description="idle free VRAM falling on this many runs in a row: a leak"
    )
    leak_trend_mb: float = Field(
        2048, gt=0, le=1e9, description="... and by at least this much in total"
    )
    stuck_running_after: float = Field(
        900, gt=0, le=7 * 86_400, description="a prompt running this long is judged for progress"
    )
    progress_window: float = Field(
        120, gt=0, le=86_400, description="stuck: no progress signal moved over this many seconds"
    )
    progress_cpu_min: float = Field(
        2.0, ge=0, le=1e6, description="CPU seconds per window the process tree must spend"
    )
    progress_gpu_min: float = Field(
        5.0, ge=0, le=100, description="GPU utilisation % of its processes that counts"
    )
    log_file: Path | None = Field(
        None, description="ComfyUI's own log to watch for new output (default: the service's)"
    )
    stuck_pending_after: float = Field(
        300,
        gt=0,
        le=7 * 86_400,
        description="pending > 0 with nothing running this long: queue stuck"
    )
    max_body_bytes: int = Field(4 * 1024 * 1024, gt=0, le=1 << 30)

    @model_validator(mode="after")
    def _stuck_after_covers_the_window(self) -> ComfyUICheckConfig:
        # A prompt is judged stuck on "no progress over progress_window": before a window
        # has passed nothing can be judged, so a shorter stuck_running_after only misleads.
        if self.stuck_running_after < self.progress_window:
            raise ValueError(
                f"stuck_running_after ({self.stuck_running_after:g} s) must be at least"
                f" progress_window ({self.progress_window:g} s): nothing can be judged stuck"
                " before a window of progress has been watched"
            )
        return self


class RunningTracker:
    """How long the running prompt has been running, as far as Guardian has seen it.

    ComfyUI executes one prompt at a time; the same ``(number, prompt_id)`` seen again is
    the same job (a restart renumbers from 0, which counts as a new one). The age counts
    from the first sighting, so after Guardian's own start it is a lower bound.
    """

    def __init__(self) -> None:
        self.current: QueueItem | None = None
        self.since = 0.0

    def see(self, running: list[QueueItem], now: float) -> float:
        """Update; seconds the running prompt has been seen running (0 when idle)."""
        if not running:
            self.current = None
            return 0.0
        if running[0] != self.current:
            self.current, self.since = running[0], now
        return now - self.since


def busy_reason(prompt_id: str, running_for: float) -> str:
    return f"busy: prompt {prompt_id} running for {running_for:.0f} s"


def _port(url: str) -> int | None:
    parts = urlsplit(url)
    try:
        return parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return None


class ComfyUICheck:
    """``/system_stats`` + ``/queue`` + progress signals, remembering them between runs.

    Busy is a state: a prompt running is OK. It is *stuck* (FAILED, ``condition =
    stuck_running``) only after ``stuck_running_after`` and with no progress signal moving
    over ``progress_window`` (see :mod:`guardian.checks.comfyui.progress`). Pending prompts with
    nothing running for ``stuck_pending_after`` is ``stuck_pending``. Low memory while idle,
    or a leak trend, or critical memory at any time is DEGRADED ``memory_pressure``. The
    conditions are handled by the remediation ladder, gentlest action first.
    """

    def __init__(
        self, cfg: ComfyUICheckConfig, ctx: CheckContext, probe: ProgressProbe | None = None
    ) -> None:
        self.config: CheckConfigBase = cfg
        self.cfg = cfg
        self.ctx = ctx
        self.api = ComfyUIClient(cfg.url, cfg.timeout, cfg.max_body_bytes)
        self.probe = probe or ProgressProbe(ctx, _port(cfg.url), cfg.log_file)
        self.tracker = RunningTracker()
        self._samples: list[ProgressSample] = []
        self._samples_for: QueueItem | None = None
        self._idle_since: float | None = None  # pending > 0, nothing running, since
        self._idle_vram: list[float] = []  # free VRAM on consecutive idle runs
        self._last_history: str | None = None
        self._imports = ImportWatch(ctx)

    async def run(self) -> Outcome:
        try:
            values, problems = await self.api.system_stats(self.cfg.vram_free_min_mb)
            running, pending = await self.api.queue()
        except ComfyUIError as exc:
            return Outcome.failed(str(exc), online=False).tagged(reason_class=exc.reason_class)
        now = self.ctx.clock.monotonic()
        running_for = self.tracker.see(running, now)
        values["queue_running"] = len(running)
        values["queue_pending"] = len(pending)
        values["busy"] = bool(running)
        values["running_prompt_id"] = running[0][1] if running else None
        values["running_for_s"] = round(running_for, 1)
        history = await self.api.newest_history_id()
        memory = self._memory(values, idle=not running and not pending, history=history)
        if running:
            self._idle_since = None
            return await self._judge_running(running[0][1], running_for, values, history,
                                             memory, problems)
        self._samples.clear()
        self._samples_for = None
        if pending:
            stuck = self._track_pending(len(pending), now, values)
            if stuck:
                return Outcome.failed(stuck, **values).tagged(
                    condition=Condition.STUCK_PENDING, reason_class="queue_stuck"
                )
        else:
            self._idle_since = None
        failed = await self._imports.failed()
        if failed:  # ComfyUI boots past them; every workflow using them fails validation
            values["failed_imports"] = ", ".join(failed)
            problems = [*problems, f"custom nodes failed to import: {', '.join(failed)}"]
        if memory is not None:
            return Outcome.degraded(memory, **values).tagged(
                condition=Condition.MEMORY_PRESSURE, reason_class="threshold"
            )
        if problems:
            return Outcome.degraded("; ".join(problems), **values).tagged(
                reason_class="threshold"
            )
        version = values["comfyui_version"] or "(unknown version)"
        return Outcome.ok(
            f"ComfyUI {version}: {len(running)} running, {len(pending)} pending", **values
        )

    async def _judge_running(
        self, prompt_id: str, running_for: float, values: dict[str, Value],
        history: str | None, memory: str | None, problems: list[str],
    ) -> Outcome:
        if self._samples_for != self.tracker.current:
            self._samples.clear()  # a new prompt: its evidence starts now
            self._samples_for = self.tracker.current
        self._samples.append(await self.probe.sample(history))
        cutoff = self._samples[-1].at - self.cfg.progress_window
        older = [i for i, sample in enumerate(self._samples) if sample.at <= cutoff]
        if older:  # keep the newest sample a window old (the baseline) and all after it
            self._samples = self._samples[older[-1]:]
        progress = judge(self._samples, self.cfg.progress_window, self.cfg.progress_cpu_min,
                         self.cfg.progress_gpu_min)
        if progress is not None:
            values.update(progress.values)
        busy = busy_reason(prompt_id, running_for)
        if running_for >= self.cfg.stuck_running_after and progress is not None:
            if progress.moved is False:
                return Outcome.failed(
                    f"queue stuck: prompt {prompt_id} running for {running_for:.0f} s with "
                    f"no progress over {self.cfg.progress_window:g} s ({progress.evidence})",
                    **values,
                ).tagged(condition=Condition.STUCK_RUNNING, reason_class="queue_stuck")
            if progress.moved is None:
                return Outcome.degraded(
                    f"{busy}; progress cannot be judged ({progress.evidence}: no process, "
                    "GPU or log signal visible)", **values,
                ).tagged(reason_class="other")
        if memory is not None:  # only critical memory is a condition while busy
            return Outcome.degraded(f"{busy}; {memory}", **values).tagged(
                condition=Condition.MEMORY_PRESSURE, reason_class="threshold"
            )
        if problems:
            busy = f"{busy} ({'; '.join(problems)})"
        return Outcome.ok(busy, **values)

    def _memory(self, values: dict[str, Value], *, idle: bool, history: str | None) -> str | None:
        """The memory-pressure reason, if any; sets ``memory_critical``. While busy only
        critical memory counts: a running job is expected to use its GPU."""
        cfg = self.cfg
        gpus = [i for i in range(int(values.get("devices") or 0))
                if values.get(f"device_type.{i}") != "cpu"]
        free = {i: float(values[f"vram_free_mb.{i}"] or 0.0) for i in gpus}
        ram_free = values.get("ram_free_mb")
        low: list[str] = []
        critical: list[str] = []
        for i, mb in free.items():
            name = values.get(f"device_name.{i}")
            if cfg.vram_critical_mb is not None and mb < cfg.vram_critical_mb:
                critical.append(f"VRAM on {name}: {mb:.0f} MB free < {cfg.vram_critical_mb:g} MB")
            elif cfg.vram_free_min_mb is not None and mb < cfg.vram_free_min_mb:
                low.append(f"VRAM on {name}: {mb:.0f} MB free < {cfg.vram_free_min_mb:g} MB")
        if isinstance(ram_free, float):
            if cfg.ram_critical_mb is not None and ram_free < cfg.ram_critical_mb:
                critical.append(f"RAM: {ram_free:.0f} MB free < {cfg.ram_critical_mb:g} MB")
            elif cfg.ram_free_min_mb is not None and ram_free < cfg.ram_free_min_mb:
                low.append(f"RAM: {ram_free:.0f} MB free < {cfg.ram_free_min_mb:g} MB")
        leak = self._leak_trend(sum(free.values()) if free else None, idle, history)
        if leak:
            low.append(leak)
        values["memory_critical"] = bool(critical)
        if critical:
            return "memory critical: " + "; ".join(critical + low)
        if idle and low:
            return "memory pressure while idle: " + "; ".join(low)
        return None

    def _leak_trend(self, vram_free: float | None, idle: bool, history: str | None) -> str | None:
        """Idle free VRAM falling run after run with no prompt finishing in between."""
        if vram_free is None or not idle or history != self._last_history:
            self._idle_vram.clear()
        self._last_history = history
        if vram_free is None or not idle:
            return None
        if self._idle_vram and vram_free >= self._idle_vram[-1]:
            self._idle_vram.clear()
        self._idle_vram.append(vram_free)
        runs = self.cfg.leak_trend_runs
        self._idle_vram = self._idle_vram[-runs:]
        drop = self._idle_vram[0] - vram_free
        if len(self._idle_vram) >= runs and drop >= self.cfg.leak_trend_mb:
            return f"VRAM leak: free VRAM fell {drop:.0f} MB over {runs} idle runs"
        return None

    def _track_pending(self, pending: int, now: float, values: dict[str, Value]) -> str | None:
        if self._idle_since is None:
            self._idle_since = now
        idle = now - self._idle_since
        values["idle_with_pending_s"] = round(idle, 1)
        if idle >= self.cfg.stuck_pending_after:
            return f"queue stuck: {pending} pending, nothing running for {idle:.0f}s"
        return None

    async def aclose(self) -> None:
        self.probe.close()
        await self.api.aclose()


MIB = 1024 * 1024

# What a ``comfyui`` result measures (MB means MiB), per device index where it is per GPU.
READINGS = (
    Reading("online", "bool", doc="ComfyUI answered its API",
            metric="guardian_comfyui_online", default=0.0),
    Reading("queue_running", "count", doc="Prompts running",
            metric="guardian_comfyui_queue_running"),
    Reading("queue_pending", "count", doc="Prompts waiting",
            metric="guardian_comfyui_queue_pending"),
    Reading("vram_free_mb", "MiB", index="device", doc="Free VRAM",
            metric="guardian_comfyui_vram_free_bytes", scale=MIB),
    Reading("vram_total_mb", "MiB", index="device", doc="VRAM size",
            metric="guardian_comfyui_vram_total_bytes", scale=MIB),
    Reading("busy", "bool", doc="1 while ComfyUI runs a prompt", metric="guardian_comfyui_busy"),
    Reading("running_for_s", "s", doc="How long the running prompt has run",
            metric="guardian_comfyui_running_seconds"),
    Reading("running_prompt_id", "text", doc="the prompt running now"),
    Reading("device_name", "text", index="device", doc="the device's name"),
    Reading("device_type", "text", index="device", doc="cuda, cpu, mps, ..."),
    Reading("comfyui_version", "text", doc="what /system_stats reports"),
    Reading("ram_free_mb", "MiB", doc="free system RAM, as ComfyUI sees it"),
    Reading("ram_total_mb", "MiB", doc="system RAM size"),
    Reading("memory_critical", "bool", doc="a critical memory limit is crossed"),
    Reading("idle_with_pending_s", "s", doc="pending prompts with nothing running, so long"),
)

def create(cfg: ComfyUICheckConfig, ctx: CheckContext) -> Check:
    """The runtime ``comfyui`` check."""
    return ComfyUICheck(cfg, ctx)


class ImportWatch:
    """The custom nodes that failed to import in the service's current run, read once per
    process from its own log output (after Guardian's start marker): ComfyUI logs ``IMPORT
    FAILED`` in its import-times table and runs on without them."""

    def __init__(self, ctx: CheckContext) -> None:
        self.ctx = ctx
        self._pid: int | None = None
        self._found: tuple[str, ...] | None = None

    async def failed(self) -> tuple[str, ...]:
        svc = self.ctx.service
        if svc is None:
            return ()
        try:
            pid = (await asyncio.wait_for(svc.status(), LOG_READ_TIMEOUT)).pid
            if pid is None:
                return ()
            if pid == self._pid and self._found is not None:
                return self._found  # this process's table was read already
            lines = await asyncio.wait_for(svc.log_tail(IMPORT_TAIL), LOG_READ_TIMEOUT)
        except Exception:
            return ()  # an unreadable log says nothing about the service
        # ComfyUI answers only after importing: no table now means none will come.
        self._pid = pid
        self._found = failed_imports(output_of_last_start(lines, _started)) or ()
        return self._found


IMPORT_TAIL = 400  # lines of the service log searched for the import-times table
LOG_READ_TIMEOUT = 2.0


def _started(line: str) -> bool:
    return line.startswith(MARKER) and ": started pid " in line
