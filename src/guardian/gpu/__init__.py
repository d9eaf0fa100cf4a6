"""Reading NVIDIA GPU state: NVML (``nvml``) or the ``nvidia-smi`` CLI (``smi``).

Both produce the same :class:`GpuInfo` rows so the GPU check judges them one way.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class GpuInfo:
    """One GPU as seen once. ``None`` means the driver does not report that field."""

    index: int
    name: str
    uuid: str | None = None
    utilization_percent: float | None = None
    memory_used_mb: float | None = None  # MiB, as nvidia-smi reports
    memory_total_mb: float | None = None
    temperature_c: float | None = None
    power_draw_w: float | None = None
    power_limit_w: float | None = None
    retired_pages_pending: bool | None = None  # pre-Ampere page retirement
    remapped_rows_pending: bool | None = None  # Ampere+ row remapping: reset needed
    remapped_rows_failure: bool | None = None  # remapping ran out: the board needs service
    ecc_uncorrected: int | None = None  # volatile (since driver load) uncorrected ECC errors
    errors: tuple[str, ...] = ()  # fields the driver answered with an error, e.g. "GPU is lost"

    @property
    def memory_percent(self) -> float | None:
        if self.memory_used_mb is None or not self.memory_total_mb:
            return None
        return 100.0 * self.memory_used_mb / self.memory_total_mb


class NoGpu(Exception):
    """Nothing NVIDIA here: the check is skipped, not failed."""


class GpuQueryError(Exception):
    """The tooling is there but could not answer (driver down, version mismatch, hang)."""
