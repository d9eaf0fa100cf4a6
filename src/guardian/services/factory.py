"""The one place a target's ``[targets.service]`` becomes a backend object.

Each backend module is imported only when a target uses it, so a Linux install never loads
the Windows backend and a Windows one never loads systemd's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from guardian.core.clock import Clock, SystemClock
from guardian.services.base import ServiceBackend
from guardian.services.config import ServiceConfig


class ServiceTarget(Protocol):
    """What building a backend needs of a target (a ``TargetConfig`` is one)."""

    @property
    def name(self) -> str: ...
    @property
    def service(self) -> ServiceConfig | None: ...


def build_backend(
    target: ServiceTarget, clock: Clock | None = None, state_dir: Path | None = None
) -> ServiceBackend | None:
    """The backend that controls ``target``'s service, or None when it has none."""
    svc = target.service
    if svc is None:
        return None
    clock = clock or SystemClock()
    backend = svc.resolved_backend
    if backend == "process":
        from guardian.services.process.backend import ProcessBackend

        assert svc.command is not None  # validated by ServiceConfig
        log_file = svc.log_file
        if log_file is None and state_dir is not None:
            # Output must outlive Guardian (an adopted process keeps writing it).
            log_file = state_dir / f"process-{target.name}.log"
        return ProcessBackend(
            target.name,
            svc.command,
            cwd=svc.cwd,
            env=svc.env,
            log_file=log_file,
            log_max_bytes=svc.log_max_bytes,
            log_backups=svc.log_backups,
            stop_timeout=svc.stop_timeout,
            clock=clock,
            record=None if state_dir is None else state_dir / f"process-{target.name}.json",
            on_guardian_stop=svc.on_guardian_stop,
        )
    assert svc.name is not None  # validated by ServiceConfig
    if backend == "systemd":
        from guardian.services.systemd import SystemdBackend

        return SystemdBackend(
            target.name,
            svc.name,
            user=svc.systemd_user,
            stop_timeout=svc.stop_timeout,
            kill_after_stop_timeout=svc.kill_stuck,
            clock=clock,
        )
    from guardian.services.windows.backend import WindowsServiceBackend

    return WindowsServiceBackend(
        target.name,
        svc.name,
        use_nssm=backend == "nssm",
        log_file=svc.log_file,
        stop_timeout=svc.stop_timeout,
        pending_timeout=svc.pending_timeout,
        kill_stuck=svc.kill_stuck,
        clock=clock,
    )
