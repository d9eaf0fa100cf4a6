"""Configuration: one TOML file, validated by pydantic, with env overrides.

The file describes *targets* (things to watch) each with an optional controllable
``service``, a ``recovery`` policy and a list of ``checks``. Every problem in a file is
reported at once with its key path and, where it can be found, its line, so a user fixes
a config in one pass. Nothing here starts anything.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import sys
import tomllib
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from guardian.checks.comfyui.canary import ComfyUICanaryConfig
from guardian.checks.comfyui.health import ComfyUICheckConfig
from guardian.checks.disk import DiskCheckConfig
from guardian.checks.gpu import GpuCheckConfig
from guardian.checks.http.check import HttpCheckConfig
from guardian.checks.memory import MemoryCheckConfig
from guardian.checks.service import ServiceCheckConfig
from guardian.services.base import validate_service_name
from guardian.support.redact import redact_data

DEFAULT_CONFIG_FILE = "guardian.toml"
CONFIG_ENV = "GUARDIAN_CONFIG"

CheckConfig = Annotated[
    HttpCheckConfig
    | ComfyUICheckConfig
    | ComfyUICanaryConfig
    | DiskCheckConfig
    | MemoryCheckConfig
    | GpuCheckConfig
    | ServiceCheckConfig,
    Field(discriminator="kind"),
]
CHECK_KINDS = ("http", "comfyui", "comfyui_canary", "disk", "memory", "gpu", "service")
_CHECK_MODELS: dict[str, type[BaseModel]] = {
    "http": HttpCheckConfig,
    "comfyui": ComfyUICheckConfig,
    "comfyui_canary": ComfyUICanaryConfig,
    "disk": DiskCheckConfig,
    "memory": MemoryCheckConfig,
    "gpu": GpuCheckConfig,
    "service": ServiceCheckConfig,
}

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


class _Section(BaseModel):
    # strict: `port = "8787"` or `critical = "false"` is a mistake to name, not to guess
    # at (an int is still accepted for a float); finite: inf/nan break timers and math.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


# Upper bounds that keep every timer, backoff product and datetime computation finite.
DAY = 86_400.0
MAX_BYTES = 1 << 40  # 1 TiB
MAX_COUNT = 1_000_000


# --------------------------------------------------------------------------- sections


class GuardianSection(_Section):
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


class ApiSection(_Section):
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


class EscalationSection(_Section):
    failures: int = Field(
        3, ge=1, le=MAX_COUNT, description="consecutive failures that escalate an incident"
    )
    stable_period: float = Field(
        120.0, ge=0, le=7 * DAY, description="healthy this long resolves it"
    )
    report_log_lines: int = Field(
        200, ge=0, le=100_000, description="last lines of the service's log in a report"
    )


NotifyEvent = Literal["open", "escalate", "resolve"]
NOTIFY_EVENTS: tuple[NotifyEvent, ...] = ("open", "escalate", "resolve")


class NotifySection(_Section):
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


class StoreSection(_Section):
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


class ServiceConfig(_Section):
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


class RecoveryConfig(_Section):
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


class RemediationConfig(_Section):
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


class TargetConfig(_Section):
    name: str = Field(pattern=TARGET_NAME_RE)
    description: str = ""
    critical: bool = Field(True, description="a failure makes the stack unhealthy, not degraded")
    service: ServiceConfig | None = None
    recovery: RecoveryConfig = Field(default_factory=RecoveryConfig)
    remediation: RemediationConfig = Field(default_factory=RemediationConfig)
    checks: list[CheckConfig] = Field(default_factory=list)


class Config(_Section):
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


# --------------------------------------------------------------------------- errors


@dataclass(frozen=True)
class Problem:
    path: str  # e.g. "targets[1].checks[0].interval"; "" for the whole file
    message: str
    line: int | None = None

    def __str__(self) -> str:
        where = self.path or "(file)"
        if self.line is not None:
            where += f" (line {self.line})"
        return f"{where}: {self.message}"


class ConfigError(Exception):
    """An invalid config: every problem found, each with its key path."""

    def __init__(self, source: str, problems: Sequence[Problem]) -> None:
        self.source = source
        self.problems = list(problems)
        super().__init__(self.render())

    def render(self) -> str:
        n = len(self.problems)
        head = f"invalid config {self.source}: {n} problem{'s' if n != 1 else ''}"
        return "\n".join([head, *(f"  - {p}" for p in self.problems)])


# --------------------------------------------------------------------------- loading


def default_config() -> Config:
    """The original plan's setup: panel + ComfyUI as services, disk and system checks."""
    return Config.model_validate(
        {
            "targets": [
                {
                    "name": "panel",
                    "description": "Next.js admin panel",
                    "service": {"name": "OrchestratorPanel"},
                    "checks": [
                        {"kind": "http", "url": "http://localhost:3000/api/health"},
                        {"kind": "service"},
                    ],
                },
                {
                    "name": "comfyui",
                    "description": "ComfyUI generation server",
                    "service": {"name": "OrchestratorComfyUI"},
                    "recovery": {"depends_on": []},
                    "checks": [{"kind": "comfyui"}, {"kind": "service"}],
                },
                {
                    "name": "disk",
                    "critical": True,
                    "checks": [{"kind": "disk"}],
                },
                {
                    "name": "system",
                    "critical": False,
                    "checks": [{"kind": "memory"}, {"kind": "gpu"}],
                },
            ]
        }
    )


def resolve_config_path(explicit: str | os.PathLike[str] | None) -> Path | None:
    """--config, then $GUARDIAN_CONFIG, then ./guardian.toml if it exists; else None."""
    if explicit:
        return Path(explicit)
    env = os.environ.get(CONFIG_ENV)
    if env:
        return Path(env)
    local = Path(DEFAULT_CONFIG_FILE)
    return local if local.is_file() else None


def load_config(
    path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None
) -> Config:
    """Read, override from the environment, validate. Raises :class:`ConfigError`."""
    env = os.environ if env is None else env
    resolved = resolve_config_path(path)
    if resolved is None:
        raw: dict[str, Any] = default_config().model_dump(mode="python", exclude_unset=True)
        return _validate(_apply_env(raw, env), source=BUILTIN_SOURCE, text="", env=env)
    source = str(resolved)
    try:
        data = resolved.read_bytes()
    except OSError as e:
        raise ConfigError(source, [Problem("", f"cannot read: {e.strerror or e}")]) from None
    try:
        text = data.decode("utf-8-sig")  # a BOM (Notepad writes one) is not content
    except UnicodeDecodeError as e:
        raise ConfigError(source, [Problem("", f"not UTF-8 text: {e.reason}")]) from None
    return parse_config(text, source=source, env=env)


def parse_config(
    text: str, source: str = "<string>", env: Mapping[str, str] | None = None
) -> Config:
    env = {} if env is None else env
    text = text.removeprefix("\ufeff")
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        line = _toml_error_line(str(e))
        msg = re.sub(r"\s*\(at line \d+, column \d+\)$", "", str(e))
        raise ConfigError(source, [Problem("", f"TOML syntax: {msg}", line)]) from None
    return _validate(_apply_env(raw, env), source=source, text=text, env=env)


BUILTIN_SOURCE = "(built-in defaults)"
NO_TARGETS = (
    "no targets: this file defines no [[targets]], so Guardian would watch nothing. "
    "Add one (see guardian.example.toml), or use no file at all for the built-in defaults"
)


def _last_line(text: str) -> int:
    """Where a missing table would go: the end of the file (line 1 when it is empty)."""
    return max(1, len(text.splitlines()))


def _validate(
    raw: dict[str, Any], source: str, text: str, env: Mapping[str, str] | None = None
) -> Config:
    locator = _KeyLocator(text)
    from_env = {f"{sect}.{field}": var for var, (sect, field) in _env_names().items()}
    from_env = {path: var for path, var in from_env.items() if env and var in env}

    def problem(path: str, message: str) -> Problem:
        if path in from_env:  # the value came from the environment, not from a line
            return Problem(path, f"{message} (from ${from_env[path]})")
        return Problem(path, message, locator.line_of(path))

    problems = [problem(p, m) for p, m in _nul_problems(raw)]
    if not raw.get("targets"):
        line = locator.line_of("targets") or _last_line(text)
        problems.append(Problem("targets", NO_TARGETS, line))
    try:
        cfg = Config.model_validate(raw)
    except ValidationError as e:
        problems += [problem(_format_loc(err["loc"]), _message(err)) for err in e.errors()]
        raise ConfigError(source, _dedupe(problems)) from None
    problems += [problem(p, m) for p, m in _semantic_problems(cfg)]
    if problems:
        raise ConfigError(source, _dedupe(problems))
    return cfg


def _nul_problems(data: Any, path: str = "") -> list[tuple[str, str]]:
    """A NUL in any string (argv, env, a path) would be cut or refused by the OS later."""
    if isinstance(data, str):
        return [(path, "contains a NUL character")] if "\x00" in data else []
    if isinstance(data, dict):
        found = []
        for key, value in data.items():
            sub = f"{path}.{key}" if path else str(key)
            if "\x00" in str(key):
                found.append((path, f"key {str(key)!r} contains a NUL character"))
            found += _nul_problems(value, sub)
        return found
    if isinstance(data, list):
        return [p for i, item in enumerate(data) for p in _nul_problems(item, f"{path}[{i}]")]
    return []


def _semantic_problems(cfg: Config) -> list[tuple[str, str]]:
    """Rules that span several fields or targets."""
    problems: list[tuple[str, str]] = []
    seen: dict[str, int] = {}
    for i, t in enumerate(cfg.targets):
        if t.name in seen:
            problems.append(
                (
                    f"targets[{i}].name",
                    f"duplicate target name {t.name!r} (also targets[{seen[t.name]}])",
                )
            )
        else:
            seen[t.name] = i
        names: dict[str, int] = {}
        for j, c in enumerate(t.checks):
            if c.check_name in names:
                problems.append(
                    (
                        f"targets[{i}].checks[{j}]",
                        f"duplicate check name {c.check_name!r} in target {t.name!r}: "
                        "give one a distinct `name`",
                    )
                )
            names[c.check_name] = j
            if c.kind == "service" and t.service is None:
                problems.append(
                    (f"targets[{i}].checks[{j}]", "a 'service' check needs [targets.service]")
                )
    for i, t in enumerate(cfg.targets):
        for dep in t.recovery.depends_on:
            if dep not in seen:
                hint = _did_you_mean(dep, list(seen))
                problems.append(
                    (f"targets[{i}].recovery.depends_on", f"unknown target {dep!r}{hint}")
                )
            elif dep == t.name:
                problems.append(
                    (f"targets[{i}].recovery.depends_on", "a target cannot depend on itself")
                )
    for cycle in _dependency_cycles(cfg.targets):
        i = seen[cycle[0]]
        problems.append(
            (f"targets[{i}].recovery.depends_on", "depends_on cycle: " + " -> ".join(cycle))
        )
    return problems


def _dependency_cycles(targets: Sequence[TargetConfig]) -> list[list[str]]:
    """Each cycle of ``depends_on`` once, as ``[a, b, a]``, starting at its first target."""
    deps = {t.name: [d for d in t.recovery.depends_on if d != t.name] for t in targets}
    order = {t.name: i for i, t in enumerate(targets)}
    done: set[str] = set()
    cycles: list[list[str]] = []
    seen_cycles: set[frozenset[str]] = set()

    def visit(name: str, stack: list[str]) -> None:
        if name in stack:
            loop = stack[stack.index(name) :]
            key = frozenset(loop)
            if key not in seen_cycles:
                seen_cycles.add(key)
                start = min(range(len(loop)), key=lambda k: order[loop[k]])
                loop = loop[start:] + loop[:start]
                cycles.append([*loop, loop[0]])
            return
        if name in done or name not in deps:
            return
        stack.append(name)
        for dep in deps[name]:
            visit(dep, stack)
        stack.pop()
        done.add(name)

    for t in targets:
        visit(t.name, [])
    return cycles


def _did_you_mean(word: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _dedupe(problems: list[Problem]) -> list[Problem]:
    out: list[Problem] = []
    seen: set[tuple[str, str]] = set()
    for p in problems:
        key = (p.path, p.message)
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out


def _message(err: Mapping[str, Any]) -> str:
    msg = str(err["msg"])
    kind = err.get("type", "")
    if kind == "extra_forbidden":
        loc = err["loc"]
        return "unknown key" + _did_you_mean(str(loc[-1]), _known_keys(loc[:-1]))
    if kind == "union_tag_invalid":
        got = err.get("input", {}).get("kind")
        hint = _did_you_mean(str(got), CHECK_KINDS)
        return f"unknown check kind {got!r}; expected one of {', '.join(CHECK_KINDS)}{hint}"
    if kind == "path_type":
        msg = "Input should be a path (a string)"
    if kind == "union_tag_not_found":
        return f"missing `kind`; expected one of {', '.join(CHECK_KINDS)}"
    msg = msg.removeprefix("Value error, ")
    inp = err.get("input")
    if (
        kind not in ("missing", "value_error")
        and isinstance(inp, str | int | float | bool)
        and len(str(inp)) < 80
    ):
        msg += f" (got {inp!r})"
    return msg


def _known_keys(loc: Sequence[str | int]) -> list[str]:
    """The keys the table at ``loc`` accepts, following pydantic's error location."""
    model: Any = Config
    for part in loc:
        if isinstance(part, int):
            continue
        fields = getattr(model, "model_fields", None)
        if fields is None:
            return []
        if part in CHECK_KINDS and part not in fields:
            model = _CHECK_MODELS[part]  # the discriminator tag pydantic puts in the path
            continue
        if part not in fields:
            return []
        model = _table_type(fields[part].annotation)
    fields = getattr(model, "model_fields", None)
    return list(fields) if fields else []


def _table_type(annotation: Any) -> Any:
    """``list[X]``, ``X | None`` -> X: the model a nested table is validated by."""
    for _ in range(4):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            return annotation
        if not args:
            return annotation
        annotation = args[0]
    return annotation


def _format_loc(loc: Sequence[str | int]) -> str:
    """('targets', 0, 'checks', 1, 'http', 'url') -> 'targets[0].checks[1].url'."""
    out = ""
    for i, part in enumerate(loc):
        if isinstance(part, int):
            out += f"[{part}]"
        elif i >= 2 and loc[i - 2] == "checks" and part in CHECK_KINDS:
            pass  # pydantic's discriminator tag, not a key of the file
        else:
            out += ("." if out else "") + part
    return out


def _toml_error_line(message: str) -> int | None:
    m = re.search(r"at line (\d+)", message)
    return int(m.group(1)) if m else None


# --------------------------------------------------------------------------- env overrides


def _env_names() -> dict[str, tuple[str, str]]:
    """GUARDIAN_LOG_DIR -> ('guardian', 'log_dir'); GUARDIAN_API_PORT -> ('api', 'port')."""
    names: dict[str, tuple[str, str]] = {}
    for section, model in Config.model_fields.items():
        if section == "targets" or model.annotation is None:
            continue
        sub = model.annotation
        if not (isinstance(sub, type) and issubclass(sub, BaseModel)):
            continue
        for fname, finfo in sub.model_fields.items():
            if _is_scalar(finfo.annotation):
                prefix = "GUARDIAN_" if section == "guardian" else f"GUARDIAN_{section.upper()}_"
                names[prefix + fname.upper()] = (section, fname)
    return names


def _is_scalar(annotation: Any) -> bool:
    text = str(annotation)
    return not any(s in text for s in ("list", "dict"))


def _apply_env(raw: dict[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    for var, (section, fname) in _env_names().items():
        if var in env and var != CONFIG_ENV:
            sect = raw.setdefault(section, {})
            if isinstance(sect, dict):
                sect[fname] = _from_env(section, fname, env[var])
    return raw


def _from_env(section: str, fname: str, text: str) -> Any:
    """An environment string as the field's type (``"9000"`` -> 9000, ``"true"`` -> True).

    The file is validated strictly, but the environment only has strings: they are
    converted by the field's type here, and one that does not convert is left as it is
    for the strict validation to report under its key path.
    """
    sub = Config.model_fields[section].annotation
    annotation = sub.model_fields[fname].annotation  # type: ignore[union-attr]
    try:
        return TypeAdapter(annotation).validate_python(text)
    except ValidationError:
        return text


# --------------------------------------------------------------------------- line lookup


class _KeyLocator:
    """Maps key paths like ``targets[1].checks[0].interval`` to TOML line numbers.

    tomllib keeps no positions, so this walks the text once tracking table headers
    and array-of-tables indices. It is best effort (inline tables resolve to their
    key's line); a path it cannot place falls back to its nearest known parent.
    """

    _header = re.compile(r"^\s*(\[\[?)\s*([A-Za-z0-9_.\"' -]+?)\s*\]\]?\s*(#.*)?$")
    _key = re.compile(r"^\s*([A-Za-z0-9_\"'-]+)\s*=")

    def __init__(self, text: str) -> None:
        self.lines: dict[str, int] = {}
        counters: dict[str, int] = {}
        current = ""
        for n, line in enumerate(text.splitlines(), start=1):
            m = self._header.match(line)
            if m:
                is_array = m.group(1) == "[["
                parts = [p.strip().strip("\"'") for p in m.group(2).split(".")]
                current = self._resolve(parts, counters, is_array)
                self.lines.setdefault(current, n)
                if is_array:  # `targets` itself is where its first [[targets]] is
                    self.lines.setdefault(current.rsplit("[", 1)[0], n)
                continue
            k = self._key.match(line)
            if k:
                key = k.group(1).strip("\"'")
                self.lines.setdefault(f"{current}.{key}" if current else key, n)

    def _resolve(self, parts: list[str], counters: dict[str, int], is_array: bool) -> str:
        path = ""
        for i, part in enumerate(parts):
            path = f"{path}.{part}" if path else part
            last = i == len(parts) - 1
            if last and is_array:
                counters[path] = counters.get(path, -1) + 1
                path = f"{path}[{counters[path]}]"
            elif path in counters:
                path = f"{path}[{counters[path]}]"
        return path

    def line_of(self, path: str) -> int | None:
        while path:
            if path in self.lines:
                return self.lines[path]
            cut = max(path.rfind("."), path.rfind("["))
            path = path[:cut] if cut > 0 else ""
        return None


def redacted_config(cfg: Config) -> dict[str, Any]:
    """The effective config as JSON-ready data with every secret hidden (``config show``)."""
    data = redact_data(cfg.model_dump(mode="python"))
    return json.loads(json.dumps(data, default=str))  # type: ignore[no-any-return]


def config_summary(cfg: Config) -> str:
    n_checks = sum(len(t.checks) for t in cfg.targets)
    services = sum(1 for t in cfg.targets if t.service)
    return (
        f"{len(cfg.targets)} targets, {n_checks} checks, {services} services; "
        f"logs in {cfg.guardian.log_dir}"
    )


def is_windows() -> bool:
    return sys.platform == "win32"
