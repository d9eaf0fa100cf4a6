"""System memory check, plus the target service's own footprint.

System: ``psutil.virtual_memory().available`` (what can be allocated without swapping)
against ``warn_available_mb`` / ``critical_available_mb``. Process: when the target has a
service with a known PID and ``process_rss_warn_mb`` is set, the RSS of that process and
all its descendants (ComfyUI spawns workers; NSSM wraps python) is summed, and above the
limit the check is *degraded* — a leak worth a look, not proof the service is down.
Values: ``available_mb``, ``total_mb``, ``used_percent``, and where measured
``process_rss_mb``, ``process_count``.

psutil reads ``/proc`` (or asks Windows); walking a process tree stuck in the kernel can
block. The measurement runs in the ``memory`` :mod:`guardian.support.blocking` pool with a
deadline inside the check's timeout, one call per check at a time.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Literal

import psutil
from pydantic import Field, model_validator

from guardian.checks.base import CheckConfigBase, CheckContext
from guardian.core.result import Outcome, Reading, Status, Value, worst
from guardian.services.base import ServiceError
from guardian.support.blocking import BlockingError, BlockingPool, pool

MB = 1024 * 1024
DEADLINE_SHARE = 0.9  # of the check's timeout: say what hung before the engine cancels
log = logging.getLogger("guardian.checks.memory")


class MemoryCheckConfig(CheckConfigBase):
    kind: Literal["memory"] = "memory"
    # A resource running short is evidence about the machine, not that the service is
    # broken: restarting ComfyUI frees no disk and can kill a running job. Opt in if wanted.
    liveness: bool = Field(
        False, description="failures count towards restarting the target's service"
    )
    interval: float = Field(60.0, gt=0, le=86_400)
    warn_available_mb: float | None = Field(2048, ge=0, le=1e9)
    critical_available_mb: float | None = Field(512, ge=0, le=1e9)
    process_rss_warn_mb: float | None = Field(
        None,
        gt=0,
        le=1e9,
        description="degraded when the target's service process RSS exceeds this",
    )

    @model_validator(mode="after")
    def _warn_above_critical(self) -> MemoryCheckConfig:
        warn, crit = self.warn_available_mb, self.critical_available_mb
        if warn is not None and crit is not None and warn < crit:
            raise ValueError(
                f"warn_available_mb ({warn:g}) is below critical_available_mb ({crit:g})"
            )
        return self


def process_tree_rss(pid: int) -> tuple[int, int] | None:
    """(RSS bytes, process count) of ``pid`` and its descendants; ``None`` if it is gone.

    Children that exit or deny access while we walk are skipped, not fatal.
    """
    try:
        root = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return None
    try:
        procs = [root, *root.children(recursive=True)]
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return None
    except psutil.AccessDenied:
        procs = [root]
    total = 0
    counted = 0
    for proc in procs:
        try:
            total += proc.memory_info().rss
            counted += 1
        except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
            continue
    return (total, counted) if counted else None


class MemoryCheck:
    def __init__(
        self, config: MemoryCheckConfig, ctx: CheckContext, workers: BlockingPool | None = None
    ) -> None:
        self.config = config
        self._ctx = ctx
        self._pool = workers or pool("memory")
        self._key = f"memory:{ctx.target}/{config.check_name}"

    async def _service_pid(self) -> int | None:
        service = self._ctx.service
        if service is None or self.config.process_rss_warn_mb is None:
            return None
        try:
            return (await service.status()).pid
        except ServiceError as exc:
            # the service check reports that; memory still judges the system
            log.debug(
                "no pid for memory check: %s",
                exc,
                extra={"target": self._ctx.target, "event": "memory_no_pid"},
            )
            return None

    async def run(self) -> Outcome:
        pid = await self._service_pid()
        try:
            return await self._pool.run(
                partial(self._measure, pid),
                self.config.timeout * DEADLINE_SHARE,
                key=self._key,
                what="memory query",
            )
        except BlockingError as exc:
            return Outcome.failed(str(exc)).tagged(reason_class="timeout")

    def _measure(self, pid: int | None) -> Outcome:
        cfg = self.config
        vm = psutil.virtual_memory()
        available_mb = vm.available / MB
        values: dict[str, Value] = {
            "available_mb": round(available_mb, 1),
            "total_mb": round(vm.total / MB, 1),
            "used_percent": round(float(vm.percent), 1),
        }
        problems: list[tuple[Status, str]] = []
        shown = f"{available_mb:.0f} MB available"
        if cfg.critical_available_mb is not None and available_mb < cfg.critical_available_mb:
            problems.append(
                (Status.FAILED, f"{shown}, below critical {cfg.critical_available_mb:g} MB")
            )
        elif cfg.warn_available_mb is not None and available_mb < cfg.warn_available_mb:
            problems.append(
                (Status.DEGRADED, f"{shown}, below warning {cfg.warn_available_mb:g} MB")
            )
        if pid is not None and cfg.process_rss_warn_mb is not None:
            measured = process_tree_rss(pid)
            if measured is not None:
                rss_mb = measured[0] / MB
                values["process_rss_mb"] = round(rss_mb, 1)
                values["process_count"] = measured[1]
                if rss_mb > cfg.process_rss_warn_mb:
                    problems.append(
                        (
                            Status.DEGRADED,
                            f"service process tree (pid {pid}, {measured[1]} processes) uses "
                            f"{rss_mb:.0f} MB, above {cfg.process_rss_warn_mb:g} MB",
                        )
                    )
        if not problems:
            return Outcome.ok(shown, **values)
        status = worst(s for s, _ in problems)
        return Outcome(status, "; ".join(why for _, why in problems), values).tagged(
            reason_class="threshold"
        )

    async def aclose(self) -> None:
        return None


# MB means MiB.
READINGS = (
    Reading("available_mb", "MiB", doc="Available system memory",
            metric="guardian_memory_available_bytes", scale=MB),
    Reading("total_mb", "MiB", doc="Total system memory",
            metric="guardian_memory_total_bytes", scale=MB),
    Reading("used_percent", "percent", doc="system memory in use"),
    Reading("process_rss_mb", "MiB", doc="the service's process tree, resident"),
    Reading("process_count", "count", doc="processes in the service's tree"),
)


def create(cfg: MemoryCheckConfig, ctx: CheckContext) -> MemoryCheck:
    return MemoryCheck(cfg, ctx)
