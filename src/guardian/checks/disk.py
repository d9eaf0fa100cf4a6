"""Disk free-space check.

``shutil.disk_usage`` on every configured path (drive roots such as ``D:\\`` on Windows,
mount points on Linux): the same call everywhere, no ``wmic``. "Free" is what an
unprivileged process can still write (``f_bavail`` on POSIX). Each path is judged against
the GB and percent thresholds; the worst path decides, and every problem is named.
Values per path: ``free_gb.<path>``, ``free_percent.<path>``, ``total_gb.<path>``.

A sleeping network share or a hung FUSE mount can block ``statfs`` forever. Every path is
measured in its own thread of the ``disk`` :mod:`guardian.support.blocking` pool, all at once,
each with a deadline inside the check's timeout: a hung path fails with its own reason
while the others are still judged, and a path whose previous call is still stuck is
reported as such without starting another thread.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from functools import partial
from typing import Literal

from pydantic import Field, model_validator

from guardian.checks.base import CheckConfigBase, CheckContext
from guardian.core.result import Outcome, Reading, Status, Value, worst
from guardian.support.blocking import BlockingError, BlockingPool, pool

GB = 1024**3
DEADLINE_SHARE = 0.9  # of the check's timeout: report a hung path before the engine cancels


def default_disk_paths() -> list[str]:
    if os.name == "nt":
        return [os.environ.get("SYSTEMDRIVE", "C:") + "\\"]
    return ["/"]


class DiskCheckConfig(CheckConfigBase):
    kind: Literal["disk"] = "disk"
    # A resource running short is evidence about the machine, not that the service is
    # broken: restarting ComfyUI frees no disk and can kill a running job. Opt in if wanted.
    liveness: bool = Field(
        False, description="failures count towards restarting the target's service"
    )
    interval: float = Field(300.0, gt=0, le=86_400)
    paths: list[str] = Field(default_factory=default_disk_paths, min_length=1, max_length=256)
    warn_gb: float | None = Field(
        50.0, ge=0, le=1e9, description="degraded below this many GB free"
    )
    critical_gb: float | None = Field(
        20.0, ge=0, le=1e9, description="failed below this many GB free"
    )
    warn_percent: float | None = Field(None, ge=0, le=100, description="degraded below % free")
    critical_percent: float | None = Field(None, ge=0, le=100, description="failed below % free")

    @model_validator(mode="after")
    def _warn_above_critical(self) -> DiskCheckConfig:
        pairs = [("warn_gb", "critical_gb"), ("warn_percent", "critical_percent")]
        for warn_key, crit_key in pairs:
            warn, crit = getattr(self, warn_key), getattr(self, crit_key)
            if warn is not None and crit is not None and warn < crit:
                raise ValueError(
                    f"{warn_key} ({warn:g}) is below {crit_key} ({crit:g}): the warning "
                    "must fire before the critical level"
                )
        return self


def judge_path(
    cfg: DiskCheckConfig, path: str, free_gb: float, free_percent: float
) -> tuple[Status, str]:
    """One path's status and, when not ok, why."""
    shown = f"{path}: {free_gb:.1f} GB free ({free_percent:.1f}%)"
    if cfg.critical_gb is not None and free_gb < cfg.critical_gb:
        return Status.FAILED, f"{shown}, below critical {cfg.critical_gb:g} GB"
    if cfg.critical_percent is not None and free_percent < cfg.critical_percent:
        return Status.FAILED, f"{shown}, below critical {cfg.critical_percent:g}%"
    if cfg.warn_gb is not None and free_gb < cfg.warn_gb:
        return Status.DEGRADED, f"{shown}, below warning {cfg.warn_gb:g} GB"
    if cfg.warn_percent is not None and free_percent < cfg.warn_percent:
        return Status.DEGRADED, f"{shown}, below warning {cfg.warn_percent:g}%"
    return Status.OK, ""


class DiskCheck:
    def __init__(
        self, config: DiskCheckConfig, ctx: CheckContext, workers: BlockingPool | None = None
    ) -> None:
        self.config = config
        self._ctx = ctx
        self._pool = workers or pool("disk")

    async def _usage(self, path: str) -> tuple[int, int] | str:
        """(free, total) bytes of ``path``, or why it could not be measured (a failure)."""
        try:
            usage = await self._pool.run(
                partial(shutil.disk_usage, path),
                self.config.timeout * DEADLINE_SHARE,
                key=statfs_key(path),
                what="statfs",
            )
        except FileNotFoundError:
            return f"{path}: does not exist"
        except OSError as exc:
            return f"{path}: {exc.strerror or exc}"
        except BlockingError as exc:
            return f"{path}: {exc}"
        return usage.free, usage.total

    async def run(self) -> Outcome:
        cfg = self.config
        measured = await asyncio.gather(*(self._usage(path) for path in cfg.paths))
        values: dict[str, Value] = {}
        problems: list[tuple[Status, str]] = []
        for path, usage in zip(cfg.paths, measured, strict=True):
            if isinstance(usage, str):
                problems.append((Status.FAILED, usage))
                continue
            free, total = usage
            free_gb = free / GB
            free_percent = 100.0 * free / total if total else 0.0
            values[f"free_gb.{path}"] = round(free_gb, 2)
            values[f"free_percent.{path}"] = round(free_percent, 2)
            values[f"total_gb.{path}"] = round(total / GB, 2)
            status, why = judge_path(cfg, path, free_gb, free_percent)
            if status is not Status.OK:
                problems.append((status, why))
        if not problems:
            lowest = min(
                (v for k, v in values.items() if k.startswith("free_gb.")),
                key=lambda v: float(v or 0),
            )
            return Outcome.ok(f"lowest free {lowest} GB", **values)
        status = worst(s for s, _ in problems)
        # most severe first, so a truncated reason still leads with what matters
        ordered = sorted(problems, key=lambda p: -p[0].severity)
        every_path = len(values) == 3 * len(cfg.paths)  # else a path could not be read
        return Outcome(status, "; ".join(why for _, why in ordered), values).tagged(
            reason_class="threshold" if every_path else "other"
        )

    async def aclose(self) -> None:
        return None


def statfs_key(path: str) -> str:
    """The :mod:`guardian.support.blocking` key of one path's statfs, shared with the snapshot."""
    return "statfs:" + os.path.normcase(os.path.abspath(path))


# Per mount point (``free_gb./data``); GB means GiB.
READINGS = (
    Reading("free_gb", "GiB", index="path", doc="Free disk space",
            metric="guardian_disk_free_bytes", scale=GB),
    Reading("total_gb", "GiB", index="path", doc="Disk size",
            metric="guardian_disk_total_bytes", scale=GB),
    Reading("free_percent", "percent", index="path", doc="free share"),
)


def create(cfg: DiskCheckConfig, ctx: CheckContext) -> DiskCheck:
    return DiskCheck(cfg, ctx)
