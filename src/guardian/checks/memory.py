"""System memory check (config; the runtime lands with the checks issue)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from guardian.checks.base import CheckConfigBase


class MemoryCheckConfig(CheckConfigBase):
    kind: Literal["memory"] = "memory"
    interval: float = Field(60.0, gt=0)
    warn_available_mb: float | None = Field(2048, ge=0)
    critical_available_mb: float | None = Field(512, ge=0)
    process_rss_warn_mb: float | None = Field(
        None, gt=0, description="degraded when the target's service process RSS exceeds this"
    )

    @model_validator(mode="after")
    def _warn_above_critical(self) -> MemoryCheckConfig:
        warn, crit = self.warn_available_mb, self.critical_available_mb
        if warn is not None and crit is not None and warn < crit:
            raise ValueError(
                f"warn_available_mb ({warn:g}) is below critical_available_mb ({crit:g})"
            )
        return self
