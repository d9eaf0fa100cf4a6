"""systemd units through ``systemctl`` and ``journalctl``.

``systemctl show`` prints ``Key=Value`` lines in systemd's own order (not the order asked
for), and exits 0 even for units that do not exist (``LoadState=not-found``), so status is
read from those properties, never from the exit code. ``--no-ask-password`` keeps a
polkit prompt from ever waiting on a terminal.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from guardian.services.base import (
    ServiceError,
    ServiceErrorKind,
    ServiceState,
    ServiceStatus,
    validate_service_name,
)
from guardian.services.subproc import CommandResult, run_command

SHOW_PROPERTIES = (
    "LoadState",
    "ActiveState",
    "SubState",
    "MainPID",
    "NRestarts",
    "ExecMainStatus",
    "Result",
)

_ACTIVE_MAP: dict[str, ServiceState] = {
    "active": ServiceState.RUNNING,
    "reloading": ServiceState.STARTING,
    "activating": ServiceState.STARTING,
    "deactivating": ServiceState.STOPPING,
    "inactive": ServiceState.STOPPED,
    "failed": ServiceState.FAILED,
}

# LSB exit codes systemctl uses: 4 "insufficient privilege", 5 "not installed".
_EXIT_ACCESS_DENIED = 4
_EXIT_NOT_INSTALLED = 5


def parse_show(text: str) -> dict[str, str]:
    """``Key=Value`` lines into a dict (values may contain ``=``)."""
    props: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip():
            props[key.strip()] = value.strip()
    return props


def status_from_show(props: dict[str, str]) -> ServiceStatus:
    load = props.get("LoadState", "")
    active = props.get("ActiveState", "")
    sub = props.get("SubState", "")
    detail = f"{load}/{active}/{sub}" if sub else f"{load}/{active}"
    if load == "not-found":
        return ServiceStatus(ServiceState.NOT_FOUND, detail=detail)
    state = _ACTIVE_MAP.get(active, ServiceState.UNKNOWN)
    result = props.get("Result", "")
    if state is ServiceState.FAILED and result and result != "success":
        detail += f" (result {result}, exit status {props.get('ExecMainStatus', '?')})"
    pid = _int(props.get("MainPID"))
    return ServiceStatus(
        state,
        pid=pid or None,
        detail=detail,
        restarts=_int(props.get("NRestarts")),
    )


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value not in (None, "", "[not set]") else None
    except ValueError:
        return None


def classify_systemctl_error(rc: int, text: str) -> ServiceErrorKind:
    lowered = text.lower()
    if "not found" in lowered or "not loaded" in lowered:
        return ServiceErrorKind.NOT_FOUND
    if (
        "access denied" in lowered
        or "interactive authentication required" in lowered
        or "permission denied" in lowered
    ):
        return ServiceErrorKind.ACCESS_DENIED
    if rc == _EXIT_ACCESS_DENIED:
        return ServiceErrorKind.ACCESS_DENIED
    if rc == _EXIT_NOT_INSTALLED:
        return ServiceErrorKind.NOT_FOUND
    return ServiceErrorKind.FAILED


class SystemdBackend:
    """Controls one systemd unit (system manager, or the user's with ``user=True``)."""

    def __init__(
        self,
        target_name: str,
        unit: str,
        *,
        user: bool = False,
        timeout: float = 30.0,
        stop_timeout: float = 90.0,
    ) -> None:
        self.name = target_name
        self.unit = validate_service_name(unit)
        self.user = user
        self.timeout = timeout
        self.stop_timeout = stop_timeout

    def _tool(self, name: str) -> str:
        found = shutil.which(name)
        if found is None:
            raise ServiceError(ServiceErrorKind.UNAVAILABLE, f"{name} not found on PATH")
        return found

    def _systemctl(self, *args: str) -> list[str]:
        argv = [self._tool("systemctl")]
        if self.user:
            argv.append("--user")
        argv += ["--no-ask-password", *args]
        return argv

    async def _run(self, argv: list[str], timeout: float) -> CommandResult:
        try:
            return await run_command(argv, timeout=timeout)
        except TimeoutError:
            raise ServiceError(
                ServiceErrorKind.TIMEOUT,
                f"{Path(argv[0]).name} for {self.unit}: no answer in {timeout:g}s",
            ) from None
        except OSError as e:
            raise ServiceError(
                ServiceErrorKind.UNAVAILABLE, f"cannot run {argv[0]}: {e.strerror or e}"
            ) from None

    async def status(self) -> ServiceStatus:
        argv = self._systemctl("show", "-p", ",".join(SHOW_PROPERTIES), "--", self.unit)
        result = await self._run(argv, self.timeout)
        props = parse_show(result.stdout)
        if result.rc != 0 or "LoadState" not in props:
            text = (result.stderr or result.stdout).strip()
            kind = classify_systemctl_error(result.rc, text)
            if kind is ServiceErrorKind.NOT_FOUND:
                return ServiceStatus(ServiceState.NOT_FOUND, detail=text[:300])
            raise ServiceError(kind, f"systemctl show {self.unit}: {text[:300] or result.rc}")
        return status_from_show(props)

    async def _control(self, verb: str) -> None:
        # systemctl waits for the job; a slow stop gets the unit's stop budget too.
        result = await self._run(
            self._systemctl(verb, "--", self.unit), self.timeout + self.stop_timeout
        )
        if result.rc == 0:
            return
        text = (result.stderr + "\n" + result.stdout).strip()
        kind = classify_systemctl_error(result.rc, text)
        raise ServiceError(kind, f"systemctl {verb} {self.unit}: {text[:300] or result.rc}")

    async def start(self) -> None:
        await self._control("start")

    async def stop(self) -> None:
        await self._control("stop")

    async def restart(self) -> None:
        await self._control("restart")

    async def log_tail(self, lines: int = 200) -> list[str]:
        if lines <= 0:
            return []
        argv = [self._tool("journalctl")]
        if self.user:
            argv.append("--user")
        argv += ["-u", self.unit, "-n", str(lines), "--no-pager", "-o", "cat"]
        result = await self._run(argv, self.timeout)
        if result.rc != 0:
            text = result.stderr.strip()
            raise ServiceError(
                classify_systemctl_error(result.rc, text),
                f"journalctl -u {self.unit}: {text[:300] or result.rc}",
            )
        out = [line for line in result.stdout.splitlines() if line != "-- No entries --"]
        return out[-lines:]

    async def aclose(self) -> None:
        """Nothing is held between calls."""
