"""Windows services through the Service Control Manager (sc.exe) and NSSM.

The stack's services are normally NSSM-wrapped (``OrchestratorComfyUI``,
``OrchestratorPanel``). Status always comes from ``sc.exe queryex`` (it gives the PID and
exit codes, and works for any service); with ``use_nssm`` a restart goes through
``nssm restart`` (which waits for the app to stop and start) and the log tail comes from
NSSM's AppStdout/AppStderr files. What the tools print is read by
:mod:`guardian.services.windows.parse`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
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
from guardian.services.windows.parse import (
    ERROR_ACCESS_DENIED,
    ERROR_SERVICE_ALREADY_RUNNING,
    ERROR_SERVICE_CANNOT_ACCEPT_CTRL,
    ERROR_SERVICE_DOES_NOT_EXIST,
    ERROR_SERVICE_NOT_ACTIVE,
    ERROR_SERVICE_REQUEST_TIMEOUT,
    ScQuery,
    classify_nssm_error,
    parse_nssm_status,
    parse_sc_error,
    parse_sc_query,
)

log = logging.getLogger("guardian.services.windows.backend")

KILL_SETTLE = 30.0  # seconds the SCM gets to notice a killed service process


# --------------------------------------------------------------------------- log files

_TAIL_BLOCK = 64 * 1024
_TAIL_MAX_BYTES = 8 * 1024 * 1024  # never read more than this from the end of a log


def read_tail(path: Path, lines: int) -> list[str]:
    """The last ``lines`` lines of ``path``, reading backwards block by block.

    NSSM logs can grow to gigabytes between rotations, so the file is never read whole.
    A missing file gives []. Undecodable bytes are replaced, not fatal.
    """
    if lines <= 0:
        return []
    try:
        f = path.open("rb")
    except FileNotFoundError:
        return []
    except OSError as e:
        raise ServiceError(
            ServiceErrorKind.FAILED, f"cannot read log {path}: {e.strerror or e}"
        ) from None
    with f:
        end = f.seek(0, os.SEEK_END)
        pos = end
        chunks: list[bytes] = []
        newlines = 0
        while pos > 0 and newlines <= lines and end - pos < _TAIL_MAX_BYTES:
            step = min(_TAIL_BLOCK, pos)
            pos -= step
            f.seek(pos)
            chunk = f.read(step)
            chunks.append(chunk)
            newlines += chunk.count(b"\n")
    data = b"".join(reversed(chunks))
    text = data.decode("utf-8", errors="replace").replace("\r\n", "\n").replace("\x00", "")
    out = text.split("\n")
    if pos > 0:
        out = out[1:]  # the first line is cut off
    if out and out[-1] == "":
        out.pop()
    return out[-lines:]


async def tail_lines(path: Path, lines: int) -> list[str]:
    return await asyncio.to_thread(read_tail, path, lines)


# --------------------------------------------------------------------------- backend


def find_tool(*names: str) -> str | None:
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    return None


class WindowsServiceBackend:
    """Controls one Windows service; see the module docstring for which tool does what."""

    def __init__(
        self,
        target_name: str,
        service_name: str,
        *,
        use_nssm: bool,
        log_file: Path | None = None,
        timeout: float = 30.0,
        stop_timeout: float = 60.0,
        pending_timeout: float = 120.0,
        kill_stuck: bool = True,
        poll_interval: float = 0.5,
        clock: Clock | None = None,
    ) -> None:
        self.name = target_name
        self.service_name = validate_service_name(service_name)
        self.use_nssm = use_nssm
        self.log_file = log_file
        self.timeout = timeout
        self.stop_timeout = stop_timeout
        self.pending_timeout = pending_timeout
        self.kill_stuck = kill_stuck
        self.poll_interval = poll_interval
        self.clock = clock or SystemClock()
        self._notes: list[str] = []  # what the last stop/restart had to do, for its report

    # ---------------------------------------------------------------- tools

    def _sc(self) -> str:
        tool = find_tool("sc.exe")
        if tool is None:
            raise ServiceError(ServiceErrorKind.UNAVAILABLE, "sc.exe not found on PATH")
        return tool

    def _nssm(self) -> str:
        tool = find_tool("nssm.exe", "nssm")
        if tool is None:
            raise ServiceError(ServiceErrorKind.UNAVAILABLE, "nssm.exe not found on PATH")
        return tool

    async def _run(self, argv: list[str], timeout: float | None = None) -> CommandResult:
        limit = self.timeout if timeout is None else timeout
        what = f"{Path(argv[0]).name} {argv[1]} {self.service_name}"
        return await run_service_tool(argv, timeout=limit, what=what)

    def _sc_failure(self, action: str, result: CommandResult) -> ServiceError:
        text = result.stdout + "\n" + result.stderr
        err = parse_sc_error(text)
        if err is None and result.rc == 0:
            return ServiceError(
                ServiceErrorKind.FAILED,
                f"sc {action} {self.service_name}: unrecognised output: {text.strip()[:300]!r}",
            )
        code = err.code if err else result.rc
        words = err.message if err and err.message else text.strip()[:300]
        message = f"sc {action} {self.service_name}: error {code}: {words}"
        if code == ERROR_SERVICE_DOES_NOT_EXIST:
            return ServiceError(ServiceErrorKind.NOT_FOUND, message)
        if code == ERROR_ACCESS_DENIED:
            return ServiceError(ServiceErrorKind.ACCESS_DENIED, message)
        if code == ERROR_SERVICE_REQUEST_TIMEOUT:
            return ServiceError(ServiceErrorKind.TIMEOUT, message)
        return ServiceError(ServiceErrorKind.FAILED, message)

    @staticmethod
    def _sc_code(result: CommandResult) -> int | None:
        err = parse_sc_error(result.stdout + "\n" + result.stderr)
        if err:
            return err.code
        return result.rc if result.rc else None

    # ---------------------------------------------------------------- protocol

    async def status(self) -> ServiceStatus:
        status = await self._status()
        if self._notes and status.state in (ServiceState.RUNNING, ServiceState.STARTING):
            # The steps a stuck restart took travel with the first status after it into
            # the recovery event (and so into the incident).
            notes, self._notes = "; ".join(self._notes), []
            status = replace(status, detail=f"{status.detail} (after: {notes})")
        return status

    async def _status(self) -> ServiceStatus:
        try:
            sc = self._sc()
        except ServiceError:
            if self.use_nssm and find_tool("nssm.exe", "nssm"):
                return await self._nssm_status()
            raise
        result, parsed = await self._query(sc)
        if parsed is not None:
            return parsed.to_status()
        failure = self._sc_failure("queryex", result)
        if failure.kind is ServiceErrorKind.NOT_FOUND:
            return ServiceStatus(ServiceState.NOT_FOUND, detail=str(failure))
        raise failure

    async def _query(self, sc: str | None = None) -> tuple[CommandResult, ScQuery | None]:
        result = await self._run([sc or self._sc(), "queryex", self.service_name])
        return result, parse_sc_query(result.stdout)

    async def _queryex(self) -> ScQuery | None:
        return (await self._query())[1]

    async def _nssm_status(self) -> ServiceStatus:
        result = await self._run([self._nssm(), "status", self.service_name])
        state = parse_nssm_status(result.stdout)
        if result.rc == 0 and state is not None:
            return ServiceStatus(state, detail=result.stdout.strip())
        text = (result.stdout + "\n" + result.stderr).strip()
        kind = classify_nssm_error(text)
        if kind is ServiceErrorKind.NOT_FOUND:
            return ServiceStatus(ServiceState.NOT_FOUND, detail=text)
        raise ServiceError(kind, f"nssm status {self.service_name}: {text[:300]}")

    async def start(self) -> None:
        result = await self._run([self._sc(), "start", self.service_name])
        code = self._sc_code(result)
        if code is None or code == ERROR_SERVICE_ALREADY_RUNNING:
            return
        raise self._sc_failure("start", result)

    async def stop(self) -> None:
        result = await self._run([self._sc(), "stop", self.service_name])
        code = self._sc_code(result)
        if code is None or code == ERROR_SERVICE_NOT_ACTIVE:
            return
        if code == ERROR_SERVICE_CANNOT_ACCEPT_CTRL:
            return  # already pending: the caller waits for it to settle (or kills it)
        raise self._sc_failure("stop", result)

    async def restart(self) -> None:
        self._notes = []
        if self.use_nssm:
            await self._nssm_restart_or_unstick()
            return
        await self._settle_pending()
        await self.stop()
        await self._wait_stopped()
        await self.start()
        await self._wait_started()

    async def _wait_stopped(self) -> None:
        """Poll until STOPPED: sc.exe returns at STOP_PENDING, and starting then fails.

        A service still STOP_PENDING after ``stop_timeout`` is stuck: with ``kill_stuck``
        its process tree is killed by the PID from ``sc queryex``, else it is an error.
        """
        state = await self._wait_until(
            (ServiceState.STOPPED, ServiceState.FAILED), self.stop_timeout, "stopping"
        )
        if state is not None:
            return
        await self._kill_stuck("STOP_PENDING", self.stop_timeout)
        if (
            await self._wait_until(
                (ServiceState.STOPPED, ServiceState.FAILED), KILL_SETTLE, "stopping"
            )
            is None
        ):
            raise ServiceError(
                ServiceErrorKind.TIMEOUT,
                f"{self.service_name} still not stopped {KILL_SETTLE:g}s after its process "
                "was killed",
            )

    async def _wait_started(self) -> None:
        """After ``sc start``: a START_PENDING that outlasts ``pending_timeout`` is stuck:
        kill the tree by PID, start once more."""
        if (
            await self._wait_until(
                (ServiceState.RUNNING, ServiceState.STOPPED, ServiceState.FAILED),
                self.pending_timeout,
                "starting",
            )
            is not None
        ):
            return
        await self._kill_stuck("START_PENDING", self.pending_timeout)
        await self._wait_until((ServiceState.STOPPED, ServiceState.FAILED), KILL_SETTLE, "stopping")
        self._step("started it again")
        await self.start()
        settled = (ServiceState.RUNNING, ServiceState.STOPPED, ServiceState.FAILED)
        if await self._wait_until(settled, self.pending_timeout, "starting") is None:
            raise ServiceError(
                ServiceErrorKind.TIMEOUT,
                f"{self.service_name} stuck in START_PENDING again after a kill and a new "
                f"start ({'; '.join(self._notes)})",
            )

    async def _settle_pending(self) -> None:
        """Before a restart: a service already pending gets ``pending_timeout`` to settle."""
        parsed = await self._queryex()
        if parsed is None or parsed.state_name not in ("START_PENDING", "STOP_PENDING"):
            return
        self._step(f"found {parsed.state_name}")
        settled = (ServiceState.RUNNING, ServiceState.STOPPED, ServiceState.FAILED)
        if await self._wait_until(settled, self.pending_timeout, "settling") is None:
            await self._kill_stuck(parsed.state_name, self.pending_timeout)
            await self._wait_until(
                (ServiceState.STOPPED, ServiceState.FAILED), KILL_SETTLE, "stopping"
            )

    async def _wait_until(
        self, states: tuple[ServiceState, ...], timeout: float, doing: str
    ) -> ServiceState | None:
        """Poll ``sc queryex`` until one of ``states``; None when ``timeout`` passed (or,
        without ``kill_stuck``, a TIMEOUT error). Stuck needs two looks, one at the start and
        one past the deadline: a single slow ``sc.exe`` call proves no duration."""
        deadline = self.clock.monotonic() + timeout
        looks = 0
        while True:
            status = await self._status()
            looks += 1
            if status.state in states:
                return status.state
            if status.state is ServiceState.NOT_FOUND:
                raise ServiceError(
                    ServiceErrorKind.NOT_FOUND, f"{self.service_name} disappeared while {doing}"
                )
            if looks >= 2 and self.clock.monotonic() >= deadline:
                if not self.kill_stuck:
                    raise ServiceError(
                        ServiceErrorKind.TIMEOUT,
                        f"{self.service_name} still {status.detail or status.state} "
                        f"after {timeout:g}s",
                    )
                return None
            await self.clock.sleep(self.poll_interval)

    def _step(self, text: str) -> None:
        unstick_step(log, self._notes, self.service_name, self.name, text)

    async def _kill_stuck(self, state_name: str, waited: float) -> None:
        """Kill the service's process tree by the PID the SCM reports for it."""
        parsed = await self._queryex()
        pid = parsed.pid if parsed is not None else None
        if pid is None:
            raise ServiceError(
                ServiceErrorKind.TIMEOUT,
                f"{self.service_name} stuck in {state_name} after {waited:g}s and "
                "sc queryex gives no PID to kill",
            )
        self._step(f"{state_name} for {waited:g}s: killing pid {pid} and its tree (taskkill /T /F)")
        tool = find_tool("taskkill.exe", "taskkill")
        if tool is None:
            raise ServiceError(ServiceErrorKind.UNAVAILABLE, "taskkill.exe not found on PATH")
        result = await self._run([tool, "/T", "/F", "/PID", str(pid)])
        if result.rc != 0:
            text = (result.stdout + "\n" + result.stderr).strip()
            raise ServiceError(
                ServiceErrorKind.FAILED,
                f"taskkill /T /F /PID {pid} ({self.service_name}): exit {result.rc}: {text[:300]}",
            )
        self._step(f"killed pid {pid}")

    async def _nssm_restart_or_unstick(self) -> None:
        """``nssm restart``, unless the service is stuck pending: then kill it by PID and
        start it (nssm itself would only wait on the stuck stop until it times out)."""
        stuck_before = False
        with contextlib.suppress(ServiceError):
            parsed = await self._queryex()
            stuck_before = parsed is not None and parsed.state_name in (
                "START_PENDING",
                "STOP_PENDING",
            )
        if not stuck_before:
            try:
                await self._nssm_restart()
                return
            except ServiceError as exc:
                if exc.kind is not ServiceErrorKind.TIMEOUT or not self.kill_stuck:
                    raise
                self._step(f"nssm restart timed out ({exc})")
        await self._settle_pending()
        await self.stop()
        await self._wait_stopped()
        await self.start()
        await self._wait_started()

    async def _nssm_restart(self) -> None:
        # nssm waits for the stop and the start itself, so it gets both budgets.
        result = await self._run(
            [self._nssm(), "restart", self.service_name],
            timeout=self.timeout + self.stop_timeout,
        )
        if result.rc == 0:
            return
        text = (result.stdout + "\n" + result.stderr).strip()
        kind = classify_nssm_error(text)
        raise ServiceError(kind, f"nssm restart {self.service_name}: {text[:300]}")

    async def log_tail(self, lines: int = 200) -> list[str]:
        """Last lines of the service's log: ``log_file``, else NSSM's AppStdout/AppStderr.

        With separate stdout and stderr files, both contribute (half each, stderr lines
        prefixed) since the order between them is unknowable.
        """
        if lines <= 0:
            return []
        if self.log_file is not None:
            return await tail_lines(self.log_file, lines)
        if not self.use_nssm:
            return []
        stdout = await self._nssm_get("AppStdout")
        stderr = await self._nssm_get("AppStderr")
        if stdout and stderr and Path(stdout) != Path(stderr):
            err_n = lines // 2
            out = await tail_lines(Path(stdout), lines - err_n)
            err = await tail_lines(Path(stderr), err_n) if err_n else []
            return out + [f"[stderr] {line}" for line in err]
        path = stdout or stderr
        return await tail_lines(Path(path), lines) if path else []

    async def _nssm_get(self, parameter: str) -> str:
        result = await self._run([self._nssm(), "get", self.service_name, parameter])
        if result.rc != 0:
            text = (result.stdout + "\n" + result.stderr).strip()
            raise ServiceError(
                classify_nssm_error(text),
                f"nssm get {self.service_name} {parameter}: {text[:300]}",
            )
        return result.stdout.strip()

    async def aclose(self) -> None:
        """Nothing is held between calls."""
