"""GPU check via NVML or nvidia-smi (config; the runtime lands with the checks issue)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from guardian.checks.base import CheckConfigBase


class GpuCheckConfig(CheckConfigBase):
    kind: Literal["gpu"] = "gpu"
    interval: float = Field(60.0, gt=0)
    backend: Literal["auto", "nvml", "nvidia-smi"] = "auto"
    vram_warn_percent: float | None = Field(95.0, gt=0, le=100)
    temp_warn_c: float | None = Field(85.0, gt=0)
    temp_critical_c: float | None = Field(95.0, gt=0)

    @model_validator(mode="after")
    def _warn_below_critical(self) -> GpuCheckConfig:
        warn, crit = self.temp_warn_c, self.temp_critical_c
        if warn is not None and crit is not None and warn > crit:
            raise ValueError(f"temp_warn_c ({warn:g}) is above temp_critical_c ({crit:g})")
        return self
