"""How to control a target's service: the ``[targets.service]`` table.

It lives with the backends it configures (below the config schema, which includes it), so
building a backend needs nothing from config.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from guardian.core.model import MAX_BYTES, StrictModel
from guardian.services.base import validate_service_name


class ServiceConfig(StrictModel):
    """How to control a target: an OS service, a systemd unit or a process we run."""

    backend: Literal["auto", "windows", "nssm", "systemd", "process"] = "auto"
    name: str | None = Field(None, description="Windows service / systemd unit name")
    command: list[str] | None = Field(None, min_length=1, description="argv, for 'process'")
    cwd: Path | None = Field(None, strict=False)
    env: dict[str, str] = Field(default_factory=dict)
    log_file: Path | None = Field(
        None, strict=False, description="stdout/stderr of a process; NSSM's log"
    )
    log_max_bytes: int = Field(10 * 1024 * 1024, ge=4096, le=MAX_BYTES)
    log_backups: int = Field(3, ge=0, le=100)
    stop_timeout: float = Field(10.0, gt=0, le=3600, description="SIGTERM -> SIGKILL after this")
    systemd_user: bool = Field(False, description="use systemctl --user")
    on_guardian_stop: Literal["stop", "leave"] = Field(
        "stop",
        description="process: 'stop' it with Guardian, or 'leave' it running for the next "
        "Guardian to adopt (like systemd KillMode=none)",
    )
    pending_timeout: float = Field(
        120.0,
        gt=0,
        le=86400,
        description="windows/nssm: START_PENDING/STOP_PENDING longer than this is stuck",
    )
    kill_stuck: bool = Field(
        True,
        description="kill a service stuck starting/stopping (Windows: its PID from sc queryex "
        "with taskkill /T /F; systemd: systemctl kill as the unit's KillMode/FinalKillSignal "
        "say), then start it again",
    )

    @field_validator("name")
    @classmethod
    def _valid_name(cls, v: str | None) -> str | None:
        return None if v is None else validate_service_name(v)

    @field_validator("command")
    @classmethod
    def _program_named(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and not v[0].strip():
            raise ValueError("the program (command[0]) is empty")
        return v

    @field_validator("env")
    @classmethod
    def _valid_env_names(cls, v: dict[str, str]) -> dict[str, str]:
        for key in v:
            if not key or "=" in key or "\x00" in key or key != key.strip():
                raise ValueError(
                    f"invalid environment variable name {key!r}: it must be non-empty, "
                    "without '=', NUL or surrounding spaces"
                )
        return v

    @model_validator(mode="after")
    def _backend_needs(self) -> ServiceConfig:
        if self.backend == "process" and not self.command:
            raise ValueError("backend 'process' needs `command` (an argv list)")
        if self.backend in ("windows", "nssm", "systemd") and not self.name:
            raise ValueError(f"backend {self.backend!r} needs `name`")
        if self.backend == "auto" and not (self.name or self.command):
            raise ValueError("a service needs `name` (OS service) or `command` (process)")
        return self

    @property
    def resolved_backend(self) -> Literal["windows", "nssm", "systemd", "process"]:
        if self.backend != "auto":
            return self.backend
        if self.command:
            return "process"
        return "nssm" if os.name == "nt" else "systemd"
