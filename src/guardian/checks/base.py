"""What every check shares: its config base, its runtime protocol, its context."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Protocol
from urllib.parse import urlsplit

from pydantic import AfterValidator, Field, model_validator

from guardian.core.model import StrictModel
from guardian.core.result import Outcome

if TYPE_CHECKING:
    from guardian.core.clock import Clock
    from guardian.services.base import ServiceBackend


def _usable_url(url: str) -> str:
    """A URL every run could connect to: a host, a port in range, brackets that close.

    Caught here, a typo is a config error naming its key and line, not a check that fails
    with "ValueError" on every run.
    """
    try:
        parts = urlsplit(url)
        port = parts.port  # ValueError on a port out of range or not a number
    except ValueError as exc:
        raise ValueError(f"invalid URL {url!r}: {exc}") from None
    if port == 0:
        raise ValueError(f"invalid URL {url!r}: port 0")
    if not parts.hostname:
        raise ValueError(f"invalid URL {url!r}: no host")
    try:  # what the resolver does with the name: a label over 63 bytes, an empty label
        parts.hostname.encode("idna")
    except UnicodeError as exc:
        raise ValueError(f"invalid URL {url!r}: host name {exc}") from None
    return url


TargetUrl = Annotated[
    str,
    Field(pattern=r"^https?://", description="http:// or https:// URL"),
    AfterValidator(_usable_url),
]


class CheckConfigBase(StrictModel):
    """Fields every ``[[targets.checks]]`` table accepts.

    Subclasses add ``kind: Literal["..."]`` and their own thresholds, and override the
    interval/timeout defaults where the plan gives other ones.
    """

    # Strict and finite like every config table (StrictModel).

    kind: str
    name: str | None = Field(None, description="unique within the target; defaults to kind")
    interval: float = Field(30.0, gt=0, le=86_400, description="seconds between runs")
    timeout: float = Field(10.0, gt=0, le=3600, description="hard limit for one run, seconds")
    enabled: bool = True
    liveness: bool = Field(
        True, description="failures count towards restarting the target's service"
    )

    @model_validator(mode="after")
    def _timeout_below_interval(self) -> CheckConfigBase:
        if self.timeout >= self.interval:
            raise ValueError(
                f"timeout ({self.timeout:g}s) must be less than interval ({self.interval:g}s)"
            )
        return self

    @property
    def check_name(self) -> str:
        return self.name or self.kind


class GuardianStall(Protocol):
    """Whether Guardian itself could run (its event-loop lag), for a check's own deadline.

    The engine's hard timeout already asks this; a check that ends itself a little sooner
    (for a clearer reason) must ask too, or Guardian's overload becomes the target's failure.
    """

    def mark(self) -> float:
        """A point to measure from, taken when the check starts."""
        ...

    def own_fault(self, mark: float, timeout: float) -> str | None:
        """The SKIPPED reason when Guardian stalled for much of ``timeout`` since ``mark``."""
        ...


@dataclass
class CheckContext:
    """What a check may use besides its own config."""

    target: str
    clock: Clock
    service: ServiceBackend | None = None  # the target's controllable service, if any
    stall: GuardianStall | None = None  # None outside a running Guardian (tests, `check`)


class Check(Protocol):
    """A runnable check. The engine owns timing, timeouts and error capture."""

    @property
    def config(self) -> CheckConfigBase:
        """Its validated config (read-only here: each kind narrows it to its own model)."""
        ...

    async def run(self) -> Outcome:
        """Observe once. May raise: the engine turns exceptions into failed results."""
        ...

    async def aclose(self) -> None:
        """Release clients, files, handles."""
        ...
