"""The one protocol every service backend implements.

Windows SCM/NSSM, systemd and processes Guardian supervises itself all look the same to
recovery: a status, start/stop/restart, and where known a PID and the last log lines.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol, runtime_checkable

# Service/unit names go to sc.exe, nssm.exe and systemctl as single argv items; we still
# refuse anything outside this set so a hostile config can never smuggle in an option
# ("-H host"), a path or shell metacharacters.
SERVICE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@:-]{0,199}$")


def validate_service_name(name: str) -> str:
    if not SERVICE_NAME_RE.fullmatch(name):
        raise ValueError(
            f"invalid service name {name!r}: use letters, digits and _ . @ : - "
            "(starting with a letter or digit, at most 200 characters)"
        )
    return name


class ServiceState(StrEnum):
    RUNNING = "running"
    STARTING = "starting"
    STOPPING = "stopping"
    STOPPED = "stopped"
    PAUSED = "paused"
    FAILED = "failed"  # e.g. systemd ActiveState=failed
    NOT_FOUND = "not_found"  # not installed (sc error 1060, systemd LoadState=not-found)
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class ServiceStatus:
    state: ServiceState
    pid: int | None = None
    detail: str = ""  # the backend's own words, for logs and reports
    restarts: int | None = None  # the manager's own restart counter, where it has one
    # A supervised process Guardian found running (started by an earlier Guardian) and
    # watches without being its parent: exit codes are unknown (None) for it on POSIX.
    adopted: bool = False


class ServiceErrorKind(StrEnum):
    NOT_FOUND = "not_found"
    ACCESS_DENIED = "access_denied"
    TIMEOUT = "timeout"
    UNAVAILABLE = "unavailable"  # the tool (sc.exe, systemctl) is missing
    FAILED = "failed"


class ServiceError(Exception):
    def __init__(self, kind: ServiceErrorKind, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class ServiceBackend(Protocol):
    """Controls one service. Every method has its own internal timeout."""

    name: str  # the target's name (for logs)

    async def status(self) -> ServiceStatus: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def restart(self) -> None: ...

    async def log_tail(self, lines: int = 200) -> list[str]:
        """The service's last log lines, oldest first; [] where none are known."""
        ...

    async def aclose(self) -> None: ...


ExitListener = Callable[[int | None], None]  # called with the exit code (None: unknown)


@runtime_checkable
class ExitNotifying(Protocol):
    """Backends that learn of an exit the instant it happens (supervised processes)."""

    def add_exit_listener(self, listener: ExitListener) -> None: ...


@runtime_checkable
class KnowsPid(Protocol):
    """Backends that know their process's pid without asking anyone (supervised processes);
    others learn it from the service manager, through their ``service`` check."""

    @property
    def pid(self) -> int | None: ...


def unstick_step(
    log: logging.Logger, notes: list[str], service: str, target: str, text: str
) -> None:
    """One step of un-sticking a service (kill by PID, start again): logged as it happens
    and kept in ``notes`` for the restart event, so it reaches the incident."""
    notes.append(text)
    log.warning(
        "%s: %s", service, text,
        extra={"target": target, "event": "service_unstick", "step": text},
    )
