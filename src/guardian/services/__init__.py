"""Service backends: Windows SCM/NSSM, systemd, and processes Guardian supervises."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from guardian.clock import Clock, SystemClock
from guardian.services.base import ServiceBackend

if TYPE_CHECKING:
    from guardian.config import TargetConfig


def build_backend(
    target: TargetConfig, clock: Clock | None = None, state_dir: Path | None = None
) -> ServiceBackend | None:
    """The backend that controls ``target``'s service, or None when it has none."""
    svc = target.service
    if svc is None:
        return None
    clock = clock or SystemClock()
    backend = svc.resolved_backend
    if backend == "process":
        from guardian.services.process import ProcessBackend

        assert svc.command is not None  # validated by ServiceConfig
        return ProcessBackend(
            target.name,
            svc.command,
            cwd=svc.cwd,
            env=svc.env,
            log_file=svc.log_file,
            log_max_bytes=svc.log_max_bytes,
            log_backups=svc.log_backups,
            stop_timeout=svc.stop_timeout,
            clock=clock,
            record=None if state_dir is None else state_dir / f"process-{target.name}.json",
        )
    assert svc.name is not None  # validated by ServiceConfig
    if backend == "systemd":
        from guardian.services.systemd import SystemdBackend

        return SystemdBackend(
            target.name, svc.name, user=svc.systemd_user, stop_timeout=svc.stop_timeout
        )
    from guardian.services.windows import WindowsServiceBackend

    return WindowsServiceBackend(
        target.name,
        svc.name,
        use_nssm=backend == "nssm",
        log_file=svc.log_file,
        stop_timeout=svc.stop_timeout,
        clock=clock,
    )
