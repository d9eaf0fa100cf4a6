"""The config schema: its sections, a target and the whole :class:`Config`.

The file describes *targets* (things to watch) each with an optional controllable
``service``, a ``recovery`` policy and a list of ``checks``. The check tables are validated
by the models the check registry lists (:mod:`guardian.checks.registry`), so a new kind
needs no edit here. Loading is :mod:`guardian.config.load`; error rendering is
:mod:`guardian.config.errors`.
"""

from __future__ import annotations

import os
import re
from functools import reduce
from operator import or_
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from guardian.checks.base import CheckConfigBase
from guardian.checks.registry import REGISTRY
from guardian.core.model import DAY, MAX_BYTES, MAX_COUNT, StrictModel
from guardian.services.config import ServiceConfig as ServiceConfig  # [targets.service]


def _check_union() -> Any:
    """The discriminated union of every registered kind's config model."""
    models = [spec.config for spec in REGISTRY]
    return Annotated[reduce(or_, models), Field(discriminator="kind")]


if TYPE_CHECKING:  # to a type checker, every kind's model is a CheckConfigBase
    CheckConfig = CheckConfigBase
else:
    CheckConfig = _check_union()

TARGET_NAME_RE = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


# --------------------------------------------------------------------------- defaults


def _is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def default_dir(kind: Literal["logs", "reports", "state"]) -> Path:
    """Platform-appropriate default directories (never a hard-coded drive letter)."""
    if os.name == "nt":
        base = Path(os.environ.get("PROGRAMDATA", r"C:\ProgramData")) / "Guardian"
        return base / kind
    if _is_root():
        return {
            "logs": Path("/var/log/guardian"),
            "reports": Path("/var/lib/guardian/reports"),
            "state": Path("/var/lib/guardian"),
        }[kind]
    xdg = os.environ.get("XDG_STATE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".local" / "state"
    return base / "guardian" / kind


# --------------------------------------------------------------------------- sections


class GuardianSection(StrictModel):
    log_dir: Path = Field(
        default_factory=lambda: default_dir("logs"),
        strict=False,
        description="guardian.log (JSON lines)",
    )
    report_dir: Path = Field(
        default_factory=lambda: default_dir("reports"),
        strict=False,
        description="Markdown incident reports",
    )
    state_dir: Path = Field(
        default_factory=lambda: default_dir("state"), strict=False, description="the SQLite store"
    )
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_max_bytes: int = Field(
        10 * 1024 * 1024, ge=4096, le=MAX_BYTES, description="rotate guardian.log here"
    )
    log_backups: int = Field(5, ge=0, le=100, description="rotated log files kept")
    jitter: float = Field(
        0.1,
        ge=0,
        le=0.5,
        description="0 runs every check at start-up on one aligned grid (tests, demos); above"
        " 0 each check keeps its own stable phase spread over its interval",
    )
    shutdown_grace: float = Field(
        5.0, gt=0, le=3600, description="seconds running checks get on exit"
    )
    dry_run: bool = Field(False, description="decide and log recovery actions, run none")

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower(cls, v: Any) -> Any:
        return v.lower() if isinstance(v, str) else v


class ApiSection(StrictModel):
    enabled: bool = Field(True, description="serve /api/health, /metrics and the status page")
    host: str = Field("127.0.0.1", description="bind address; loopback unless you mean it")
    port: int = Field(8787, ge=0, le=65535)
    token: SecretStr | None = Field(
        None, description="bearer token for mutating calls; they are disabled without one"
    )
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description="extra Host header names served (loopback names and `host` always are)",
    )
    max_connections: int = Field(
        64, ge=1, le=10_000, description="open API connections; more are closed at once"
    )
    max_concurrency: int = Field(
        32, ge=1, le=10_000, description="requests in progress; more get 503"
    )
    max_header_bytes: int = Field(
        32 * 1024, ge=1024, le=1024 * 1024, description="a request head larger gets 431"
    )
    header_timeout: float = Field(
        5.0, gt=0, le=300, description="seconds to send a request head, else closed"
    )
    keep_alive_timeout: float = Field(
        5.0, gt=0, le=300, description="seconds an idle keep-alive connection stays open"
    )

    @model_validator(mode="after")
    def _public_bind_needs_token(self) -> ApiSection:
        # Anyone who can reach a non-loopback address could read the whole stack's state
        # and, with a guessed empty token, act on it: such a bind must be deliberate.
        token = self.token.get_secret_value() if self.token is not None else ""
        if self.enabled and not token and not is_loopback_host(self.host):
            raise ValueError(
                f"api.host = {self.host!r} is not a loopback address: set api.token "
                "(GUARDIAN_API_TOKEN) to serve beyond this machine, or bind 127.0.0.1"
            )
        return self

    @field_validator("token")
    @classmethod
    def _token_fits_a_header(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None and re.search(r"[\x00-\x20\x7f]", v.get_secret_value()):
            raise ValueError("token must not contain spaces or control characters")
        return v


def is_loopback_host(host: str) -> bool:
    """True for ``localhost`` and loopback IP literals (127.0.0.0/8, ::1)."""
    import ipaddress

    name = host.strip().strip("[]").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class EscalationSection(StrictModel):
    failures: int = Field(
        3, ge=1, le=MAX_COUNT, description="consecutive failures that escalate an incident"
    )
    stable_period: float = Field(
        120.0, ge=0, le=7 * DAY, description="healthy this long resolves it"
    )
    report_log_lines: int = Field(
        200, ge=0, le=100_000, description="last lines of the service's log in a report"
    )
    remediation_repeats: int = Field(
        6,
        ge=0,
        le=MAX_COUNT,
        description="a gentle fix (/free, /interrupt) that succeeds this many times within"
        " remediation_window opens an incident (a leak it only hides); 0 disables",
    )
    remediation_window: float = Field(
        3600.0, gt=0, le=7 * DAY, description="seconds remediation_repeats are counted over"
    )


NotifyEvent = Literal["open", "escalate", "resolve", "quarantine"]
NOTIFY_EVENTS: tuple[NotifyEvent, ...] = ("open", "escalate", "resolve", "quarantine")


class NotifySection(StrictModel):
    urls: list[SecretStr] = Field(default_factory=list, description="apprise URLs")
    events: list[NotifyEvent] = Field(
        default_factory=lambda: list(NOTIFY_EVENTS), description="transitions that notify"
    )
    rate_limit_per_hour: int = Field(20, ge=1, le=3600, description="per target")
    retries: int = Field(3, ge=0, le=10, description="per message, with backoff")
    timeout: float = Field(10.0, gt=0, le=300, description="seconds per delivery attempt")
    group_window: float = Field(
        10.0,
        ge=0,
        le=600,
        description="seconds: after a message, other targets' news within this window goes"
        " out as one grouped message at its end (a fan-out is one page, not 1000); 0 sends"
        " one message per incident transition",
    )


class StoreSection(StrictModel):
    path: Path | None = Field(
        None, strict=False, description="SQLite file; default <state_dir>/guardian.db"
    )
    retention_days: float = Field(
        30.0, gt=0, le=3650, description="events older than this are pruned"
    )
    max_events: int = Field(
        100_000, ge=100, le=100_000_000, description="and at most this many are kept"
    )


# --------------------------------------------------------------------------- targets


class RecoveryConfig(StrictModel):
    enabled: bool = True
    cooldown: float = Field(30.0, ge=0, le=DAY, description="minimum seconds between attempts")
    max_attempts: int = Field(
        3, ge=1, le=MAX_COUNT, description="attempts within `window` before giving up"
    )
    window: float = Field(3600.0, gt=0, le=30 * DAY)
    backoff_factor: float = Field(2.0, ge=1.0, le=10.0)
    backoff_max: float = Field(300.0, ge=0, le=DAY)
    failure_threshold: int = Field(
        3, ge=1, le=MAX_COUNT, description="consecutive liveness failures"
    )
    stable_period: float = Field(
        120.0, ge=0, le=7 * DAY, description="healthy this long resets attempts"
    )
    grace_period: float = Field(
        0.0,
        ge=0,
        le=DAY,
        description="deprecated (use startup_timeout): seconds after a (re)start in which"
        " liveness failures never count, even after a first success",
    )
    startup_timeout: float = Field(
        300.0,
        ge=0,
        le=7 * DAY,
        description="after Guardian's start or a (re)start, failures open no incident and"
        " count toward no restart until the first success or this many seconds; 0 disables",
    )
    startup_probe_interval: float = Field(
        1.0, gt=0, le=3600, description="seconds between checks while in the startup phase"
    )
    min_uptime: float = Field(
        10.0,
        ge=0,
        le=DAY,
        description="a restarted process that exits sooner (before a passing check) is a"
        " failed start",
    )
    depends_on: list[str] = Field(default_factory=list, description="start after these targets")


class RemediationConfig(StrictModel):
    """The ladder of gentle actions before a restart, for a ComfyUI target's conditions."""

    enabled: bool = Field(True, description="run the ladder for stuck/memory conditions")
    interrupt_wait: float = Field(
        10.0, gt=0, description="after POST /interrupt, seconds before re-reading /queue"
    )
    free_wait: float = Field(
        5.0, gt=0, description="after POST /free, seconds before re-reading /system_stats"
    )
    pending_wait: float = Field(
        10.0, gt=0, description="stuck_pending: seconds to wait for the queue to move"
    )
    restart: bool = Field(True, description="ask for a restart when the gentle rungs fail")


class QueueJournalConfig(StrictModel):
    """A ComfyUI target's queue journal: what was queued comes back after every restart."""

    enabled: bool = Field(True, description="journal the queue of the target's comfyui check")
    restore: bool = Field(True, description="re-submit the journaled prompts after a restart")
    fallback_interval: float = Field(
        30.0, gt=0, le=DAY, description="read /queue this often though the websocket is quiet"
    )
    poll_interval: float = Field(
        1.0, gt=0, le=DAY, description="read /queue this often while the websocket is down"
    )
    max_body_bytes: int = Field(
        64 * 1024 * 1024, gt=0, le=MAX_BYTES, description="a larger /queue is a failed read"
    )
    max_prompts: int = Field(
        10_000, gt=0, le=1_000_000, description="a longer queue is a failed read"
    )
    quarantine_after: int = Field(
        2, ge=1, le=100, description="a prompt running at this many deaths is quarantined"
    )
    idle_wait_max: float = Field(
        3600.0, gt=0, le=DAY, description="restart --when-idle waits at most this long"
    )
    restart_every: float | None = Field(
        None, ge=60, le=30 * DAY,
        description="planned restart this often, between jobs (against slow leaks)",
    )


class TargetConfig(StrictModel):
    name: str = Field(pattern=TARGET_NAME_RE)
    description: str = ""
    critical: bool = Field(True, description="a failure makes the stack unhealthy, not degraded")
    service: ServiceConfig | None = None
    recovery: RecoveryConfig = Field(default_factory=RecoveryConfig)
    remediation: RemediationConfig = Field(default_factory=RemediationConfig)
    queue: QueueJournalConfig = Field(default_factory=QueueJournalConfig)
    checks: list[CheckConfig] = Field(default_factory=list)


class Config(StrictModel):
    guardian: GuardianSection = Field(default_factory=GuardianSection)
    api: ApiSection = Field(default_factory=ApiSection)
    escalation: EscalationSection = Field(default_factory=EscalationSection)
    notify: NotifySection = Field(default_factory=NotifySection)
    store: StoreSection = Field(default_factory=StoreSection)
    targets: list[TargetConfig] = Field(default_factory=list)

    def target(self, name: str) -> TargetConfig:
        for t in self.targets:
            if t.name == name:
                return t
        raise KeyError(name)

    @property
    def store_path(self) -> Path:
        return self.store.path or self.guardian.state_dir / "guardian.db"


def _rebuild() -> None:
    """A kind registered at run time: validate ``checks`` by the new union from now on."""
    union = globals()["CheckConfig"] = _check_union()
    TargetConfig.model_fields["checks"].annotation = list[union]  # type: ignore[valid-type]
    TargetConfig.model_rebuild(force=True)
    Config.model_rebuild(force=True)


REGISTRY.on_change(_rebuild)
