"""Service state check: asks the target's service manager whether the service runs.

A cheap, direct signal next to the HTTP checks: it tells "the process is gone" apart from
"the process is up but not answering", which recovery and reports both care about.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from guardian.checks.base import CheckConfigBase, CheckContext
from guardian.core.result import Outcome, Reading
from guardian.services.base import ServiceError, ServiceErrorKind, ServiceState, ServiceStatus


class ServiceCheckConfig(CheckConfigBase):
    """Asks the target's service backend whether it runs. Needs ``[targets.service]``."""

    kind: Literal["service"] = "service"
    interval: float = Field(60.0, gt=0, le=86_400)
    timeout: float = Field(15.0, gt=0, le=3600)


_FAILED_REASONS: dict[ServiceState, str] = {
    ServiceState.STOPPED: "service stopped",
    ServiceState.FAILED: "service failed",
    ServiceState.PAUSED: "service paused",
    ServiceState.NOT_FOUND: "service not installed",
}


def outcome_for(status: ServiceStatus) -> Outcome:
    """Map a backend status to a check outcome (pure, so it is tested on its own)."""
    values: dict[str, int | str | None] = {
        "state": status.state.value,
        "pid": status.pid,
        "restarts": status.restarts,
    }
    detail = f" ({status.detail})" if status.detail else ""
    if status.state is ServiceState.RUNNING:
        return Outcome.ok(f"service running{detail}", **values)
    if status.state in (ServiceState.STARTING, ServiceState.STOPPING):
        return Outcome.degraded(f"service {status.state.value}{detail}", **values).tagged(
            reason_class="service"
        )
    if status.state is ServiceState.UNKNOWN:
        # Unreadable state: report it, but don't let it count as "down" for recovery.
        return Outcome.degraded(f"service state unknown{detail}", **values).tagged(
            reason_class="service"
        )
    return Outcome.failed(_FAILED_REASONS[status.state] + detail, **values).tagged(
        reason_class="service"
    )


class ServiceCheck:
    def __init__(self, config: ServiceCheckConfig, ctx: CheckContext) -> None:
        self.config = config
        self.ctx = ctx

    async def run(self) -> Outcome:
        service = self.ctx.service
        if service is None:
            return Outcome.failed("no service configured").tagged(reason_class="service")
        try:
            status = await service.status()
        except ServiceError as e:
            timed_out = e.kind is ServiceErrorKind.TIMEOUT
            return Outcome.failed(f"{e.kind.value}: {e}", error=e.kind.value).tagged(
                reason_class="timeout" if timed_out else "service"
            )
        return outcome_for(status)

    async def aclose(self) -> None:
        """The backend belongs to the target, not to this check: nothing to close."""


READINGS = (
    Reading("state", "text", doc="the service manager's state"),
    Reading("pid", "count", doc="its main process"),
    Reading("restarts", "count", doc="restarts the manager counted"),
)


def create(cfg: ServiceCheckConfig, ctx: CheckContext) -> ServiceCheck:
    return ServiceCheck(cfg, ctx)
