"""HTTP health endpoint check (config; the runtime lands with the checks issue)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from guardian.checks.base import CheckConfigBase


class JsonCondition(BaseModel):
    """A condition on the JSON body, e.g. ``services.OrchestratorComfyUI.running == true``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str = Field(min_length=1, description="dotted path; list items by index (a.0.b)")
    op: Literal["==", "!=", "contains", "<=", ">=", "<", ">", "exists"] = "=="
    value: Any = None


class HttpCheckConfig(CheckConfigBase):
    kind: Literal["http"] = "http"
    url: str = Field(pattern=r"^https?://", description="http:// or https:// URL")
    method: Literal["GET", "HEAD"] = "GET"
    headers: dict[str, str] = Field(default_factory=dict)
    expect_status: list[int] = Field(
        default_factory=list, description="accepted status codes; empty means any 2xx"
    )
    json_status: bool = Field(
        True, description="read `status`/`overall` (healthy|degraded|unhealthy) from JSON"
    )
    conditions: list[JsonCondition] = Field(default_factory=list)
    body_contains: str | None = None
    max_response_ms: float | None = Field(None, gt=0)
    max_body_bytes: int = Field(1024 * 1024, gt=0, description="stop reading past this")
    connect_timeout: float | None = Field(None, gt=0, description="defaults to timeout")
    follow_redirects: bool = True
    max_redirects: int = Field(5, ge=0, le=30)
    verify_tls: bool = True
