"""Disk free-space check (config; the runtime lands with the checks issue)."""

from __future__ import annotations

import os
from typing import Literal

from pydantic import Field, model_validator

from guardian.checks.base import CheckConfigBase


def default_disk_paths() -> list[str]:
    if os.name == "nt":
        return [os.environ.get("SystemDrive", "C:") + "\\"]
    return ["/"]


class DiskCheckConfig(CheckConfigBase):
    kind: Literal["disk"] = "disk"
    interval: float = Field(300.0, gt=0)
    paths: list[str] = Field(default_factory=default_disk_paths, min_length=1)
    warn_gb: float | None = Field(50.0, ge=0, description="degraded below this many GB free")
    critical_gb: float | None = Field(20.0, ge=0, description="failed below this many GB free")
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
