"""Service state check (config; the runtime lands with the services issue)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from guardian.checks.base import CheckConfigBase


class ServiceCheckConfig(CheckConfigBase):
    """Asks the target's service backend whether it runs. Needs ``[targets.service]``."""

    kind: Literal["service"] = "service"
    interval: float = Field(60.0, gt=0)
    timeout: float = Field(15.0, gt=0)
