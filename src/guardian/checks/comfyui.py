"""Deep ComfyUI checks (config; the runtime lands with the checks issue)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from guardian.checks.base import CheckConfigBase

DEFAULT_COMFYUI_URL = "http://127.0.0.1:8188"


class ComfyUICheckConfig(CheckConfigBase):
    """``/system_stats`` + ``/queue``: online, versions, VRAM, hung-queue detection."""

    kind: Literal["comfyui"] = "comfyui"
    url: str = Field(DEFAULT_COMFYUI_URL, pattern=r"^https?://")
    vram_free_min_mb: float | None = Field(
        1024, ge=0, description="degraded when any GPU's free VRAM is below this"
    )
    stuck_running_after: float = Field(
        900, gt=0, description="same prompt running this long without progress: queue stuck"
    )
    stuck_pending_after: float = Field(
        300, gt=0, description="pending > 0 with nothing running this long: queue stuck"
    )
    max_body_bytes: int = Field(4 * 1024 * 1024, gt=0)


class ComfyUICanaryConfig(CheckConfigBase):
    """Submit a model-free EmptyImage -> PreviewImage prompt and wait for it to finish."""

    kind: Literal["comfyui_canary"] = "comfyui_canary"
    url: str = Field(DEFAULT_COMFYUI_URL, pattern=r"^https?://")
    interval: float = Field(600.0, gt=0)
    timeout: float = Field(60.0, gt=0)
    poll_interval: float = Field(0.5, gt=0)
    width: int = Field(64, ge=8, le=4096)
    height: int = Field(64, ge=8, le=4096)
