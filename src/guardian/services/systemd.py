"""systemd units through ``systemctl`` and ``journalctl``.

``systemctl show`` prints ``Key=Value`` lines in systemd's own order (not the order asked
for), and exits 0 even for units that do not exist (``LoadState=not-found``), so status is
read from those properties, never from the exit code. ``--no-ask-password`` keeps a
polkit prompt from ever waiting on a terminal.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import signal
from dataclasses import replace
from pathlib import Path

from guardian.core.clock import Clock, SystemClock
from guardian.services.base import (
    ServiceError,
    ServiceErrorKind,
    ServiceState,
    ServiceStatus,
    unstick_step,
    validate_service_name,
)
from guardian.services.subproc import CommandResult, run_service_tool

log = logging.getLogger("guardian.services.systemd")

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
        kill_after_stop_timeout: bool = True,
        poll_interval: float = 0.5,
        clock: Clock | None = None,
    ) -> None:
        self.name = target_name
        self.unit = validate_service_name(unit)
        self.user = user
        self.timeout = timeout
        self.stop_timeout = stop_timeout
        self.kill_after_stop_timeout = kill_after_stop_timeout
        self.poll_interval = poll_interval
        self.clock = clock or SystemClock()
        self._notes: list[str] = []  # what the last stop/restart had to do, for its report

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
        what = f"{Path(argv[0]).name} for {self.unit}"
        return await run_service_tool(argv, timeout=timeout, what=what)

    async def status(self) -> ServiceStatus:
        status = await self._status()
        if self._notes and status.state in (ServiceState.RUNNING, ServiceState.STARTING):
            # What a stuck restart had to do travels with the first status after it into
            # the recovery event, and so into the incident.
            notes, self._notes = "; ".join(self._notes), []
            status = replace(status, detail=f"{status.detail} (after: {notes})")
        return status

    async def _status(self) -> ServiceStatus:
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
        """``systemctl stop``; a unit still deactivating after ``stop_timeout`` (or a stop
        job that never returns) is killed the way its own unit file says (see
        :meth:`_kill_stuck`)."""
        self._notes = []
        try:
            await self._control("stop")
        except ServiceError as exc:
            if exc.kind is not ServiceErrorKind.TIMEOUT or not self.kill_after_stop_timeout:
                raise
            await self._kill_stuck(f"systemctl stop did not return ({exc})")
            return
        if not await self._wait_stopped(self.stop_timeout):
            if not self.kill_after_stop_timeout:
                raise ServiceError(
                    ServiceErrorKind.TIMEOUT,
                    f"{self.unit} still deactivating after {self.stop_timeout:g}s",
                )
            await self._kill_stuck(f"still deactivating after {self.stop_timeout:g}s")

    async def restart(self) -> None:
        """``systemctl restart``; when it hangs (the job does not return, or the unit is
        left deactivating past ``stop_timeout``), kill the unit's processes and start."""
        self._notes = []
        try:
            await self._control("restart")
        except ServiceError as exc:
            if exc.kind is not ServiceErrorKind.TIMEOUT or not self.kill_after_stop_timeout:
                raise
            await self._kill_stuck(f"systemctl restart did not return ({exc})")
            await self._start_again()
            return
        if (await self._status()).state is not ServiceState.STOPPING:
            return
        if await self._wait_stopped(self.stop_timeout, running_is_done=True):
            return
        if not self.kill_after_stop_timeout:
            raise ServiceError(
                ServiceErrorKind.TIMEOUT,
                f"{self.unit} still deactivating after {self.stop_timeout:g}s",
            )
        await self._kill_stuck(f"restart: still deactivating after {self.stop_timeout:g}s")
        await self._start_again()

    async def _start_again(self) -> None:
        self._step("started it again")
        await self._control("start")

    async def _wait_stopped(self, timeout: float, *, running_is_done: bool = False) -> bool:
        """Poll until the unit is no longer stopping (nor running, unless
        ``running_is_done``: a restart that got through). False after ``timeout``."""
        deadline = self.clock.monotonic() + timeout
        busy = (
            {ServiceState.STOPPING}
            if running_is_done
            else {ServiceState.STOPPING, ServiceState.RUNNING}
        )
        while True:
            state = (await self._status()).state
            if state not in busy:
                return True
            if self.clock.monotonic() >= deadline:
                return False
            await self.clock.sleep(self.poll_interval)

    def _step(self, text: str) -> None:
        unstick_step(log, self._notes, self.unit, self.name, text)

    async def _kill_plan(self) -> tuple[str, str]:
        """(``--kill-whom``, ``--signal``) as the unit itself would end a stop that timed
        out: its ``FinalKillSignal`` (SIGKILL unless set), sent to what its ``KillMode``
        names (``process``/``none``: the main process only; ``control-group``/``mixed``:
        every process of the unit). Unreadable properties give systemd's defaults."""
        whom, sig = "all", "SIGKILL"
        argv = self._systemctl("show", "-p", "KillMode,FinalKillSignal", "--", self.unit)
        try:
            result = await self._run(argv, self.timeout)
        except ServiceError:
            return whom, sig
        props = parse_show(result.stdout)
        if props.get("KillMode") in ("process", "none"):
            whom = "main"
        number = _int(props.get("FinalKillSignal"))
        if number is not None:
            with contextlib.suppress(ValueError):
                sig = signal.Signals(number).name
        return whom, sig

    async def _kill_stuck(self, why: str) -> None:
        """``systemctl kill`` the unit (through systemd, so only the unit's own processes
        are hit, whatever their pids), then wait for it to settle."""
        whom, sig = await self._kill_plan()
        self._step(f"{why}: systemctl kill --kill-whom={whom} --signal={sig}")
        argv = self._systemctl("kill", f"--kill-whom={whom}", f"--signal={sig}", "--", self.unit)
        result = await self._run(argv, self.timeout)
        text = (result.stderr + "\n" + result.stdout).strip()
        if result.rc != 0 and "kill-whom" in text and "option" in text:
            # systemd < 252 knows the option as --kill-who.
            argv[argv.index(f"--kill-whom={whom}")] = f"--kill-who={whom}"
            result = await self._run(argv, self.timeout)
            text = (result.stderr + "\n" + result.stdout).strip()
        if result.rc != 0:
            state = (await self._status()).state
            if state in (ServiceState.STOPPED, ServiceState.FAILED):
                # It ended on its own just before the kill (systemd 252 then even says
                # "Unit ... not loaded" for the inactive unit).
                self._step(f"{self.unit} had ended before the kill")
                return
            raise ServiceError(
                classify_systemctl_error(result.rc, text),
                f"systemctl kill {self.unit}: {text[:300] or result.rc}",
            )
        if not await self._wait_stopped(self.timeout):
            raise ServiceError(
                ServiceErrorKind.TIMEOUT,
                f"{self.unit} still running {self.timeout:g}s after systemctl kill "
                f"({'; '.join(self._notes)})",
            )
        self._step(f"{self.unit} ended ({(await self._status()).detail})")

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
