"""Windows services through the Service Control Manager (sc.exe) and NSSM.

The stack's services are normally NSSM-wrapped (``OrchestratorComfyUI``,
``OrchestratorPanel``). Status always comes from ``sc.exe queryex`` (it gives the PID and
exit codes, and works for any service); with ``use_nssm`` a restart goes through
``nssm restart`` (which waits for the app to stop and start) and the log tail comes from
NSSM's AppStdout/AppStderr files. sc.exe messages are localised, so errors are recognised
by their numeric code (``FAILED 1060:``), never by their words; on some languages (e.g.
Russian) even the block's field names are, so a block is also read by its fields' order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shutil
from dataclasses import dataclass, field, replace
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

log = logging.getLogger("guardian.services.windows.backend")

KILL_SETTLE = 30.0  # seconds the SCM gets to notice a killed service process

# Win32 error codes sc.exe reports as "[SC] <Function> FAILED <code>:".
ERROR_ACCESS_DENIED = 5
ERROR_SERVICE_REQUEST_TIMEOUT = 1053
ERROR_SERVICE_ALREADY_RUNNING = 1056
ERROR_SERVICE_DISABLED = 1058
ERROR_SERVICE_DOES_NOT_EXIST = 1060
ERROR_SERVICE_CANNOT_ACCEPT_CTRL = 1061
ERROR_SERVICE_NOT_ACTIVE = 1062
ERROR_SERVICE_NEVER_STARTED = 1077

# SERVICE_STATUS.dwCurrentState values.
SC_STATES: dict[int, str] = {
    1: "STOPPED",
    2: "START_PENDING",
    3: "STOP_PENDING",
    4: "RUNNING",
    5: "CONTINUE_PENDING",
    6: "PAUSE_PENDING",
    7: "PAUSED",
}
_STATE_MAP: dict[str, ServiceState] = {
    "RUNNING": ServiceState.RUNNING,
    "STOPPED": ServiceState.STOPPED,
    "START_PENDING": ServiceState.STARTING,
    "CONTINUE_PENDING": ServiceState.STARTING,
    "STOP_PENDING": ServiceState.STOPPING,
    "PAUSE_PENDING": ServiceState.STOPPING,
    "PAUSED": ServiceState.PAUSED,
}

# "FAILED" is localised ("FEHLER", "ÉCHEC 5 :", "失败"), so only the shape is matched. The
# function may hold a space: "[SC] StartService: OpenService FAILED 1060:".
_SC_ERROR_RE = re.compile(r"\[SC\][ \t]*([^\n]+?)[ \t]+\S+[ \t]+(\d+)[ \t]*:[ \t]*\n?(.*)", re.S)
_SC_FIELD_RE = re.compile(r"^\s*([A-Z0-9_]+)\s*:\s*(.*?)\s*$")


@dataclass(frozen=True)
class ScQuery:
    """The parsed block of ``sc query``/``sc queryex``/``sc start``/``sc stop``."""

    service_name: str
    state_code: int
    state_name: str
    controls: tuple[str, ...] = ()  # e.g. ("STOPPABLE", "NOT_PAUSABLE", "ACCEPTS_SHUTDOWN")
    win32_exit_code: int = 0
    service_exit_code: int = 0
    pid: int | None = None  # queryex only; None when 0 (not running)
    flags: str = ""
    fields: dict[str, str] = field(default_factory=dict)

    @property
    def state(self) -> ServiceState:
        mapped = _STATE_MAP.get(self.state_name, ServiceState.UNKNOWN)
        if mapped is ServiceState.STOPPED and self.win32_exit_code not in (
            0,
            ERROR_SERVICE_NEVER_STARTED,
        ):
            return ServiceState.FAILED
        return mapped

    def to_status(self) -> ServiceStatus:
        detail = f"{self.state_name}"
        if self.win32_exit_code:
            detail += f" (WIN32_EXIT_CODE {self.win32_exit_code}"
            if self.service_exit_code:
                detail += f", SERVICE_EXIT_CODE {self.service_exit_code}"
            detail += ")"
        return ServiceStatus(self.state, pid=self.pid, detail=detail)


@dataclass(frozen=True)
class ScError:
    """``[SC] OpenService FAILED 1060:`` followed by the (localised) message."""

    function: str
    code: int
    message: str


def parse_sc_error(text: str) -> ScError | None:
    m = _SC_ERROR_RE.search(text)
    if not m:
        return None
    message = " ".join(line.strip() for line in m.group(3).splitlines() if line.strip())
    return ScError(m.group(1), int(m.group(2)), message)


# The order sc.exe prints a block's indented fields in; localised Windows translates the
# field names ("Состояние", "ID_процесса") but keeps this order and the values' English
# tokens ("4  RUNNING", "10  WIN32_OWN_PROCESS").
_BLOCK_ORDER = (
    "TYPE",
    "STATE",
    "WIN32_EXIT_CODE",
    "SERVICE_EXIT_CODE",
    "CHECKPOINT",
    "WAIT_HINT",
    "PID",
    "FLAGS",
)
_STATE_VALUE_RE = re.compile(r"^(\d+)\s+([A-Z_]+)\s*$")


def _block_fields(text: str) -> tuple[dict[str, str], tuple[str, ...]]:
    """The first block's fields under their English names, and its controls line."""
    english: dict[str, str] = {}
    named: list[tuple[bool, str, str]] = []  # (indented, key, value) in printed order
    controls: tuple[str, ...] = ()
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("(") and stripped.endswith(")") and named:
            controls = controls or tuple(
                c.strip() for c in stripped[1:-1].split(",") if c.strip()
            )
            continue
        key, sep, value = stripped.partition(":")
        if not sep or not key or " " in key.strip() or key.startswith("["):
            continue
        indented = line[:1].isspace()
        if not indented and any(i for i, _, _ in named):
            break  # the next service's block
        named.append((indented, key.strip(), value.strip()))
        if _SC_FIELD_RE.match(line):
            english.setdefault(key.strip(), value.strip())
    if "SERVICE_NAME" in english and "STATE" in english:
        return english, controls
    # Localised field names: map by position, if the values have the block's shape.
    heads = [v for i, _, v in named if not i]
    body = [v for i, _, v in named if i]
    if not heads or len(body) < 2 or not _STATE_VALUE_RE.match(body[1]):
        return {}, ()
    fields = dict(zip(_BLOCK_ORDER, body, strict=False))
    fields["SERVICE_NAME"] = heads[0]
    if len(heads) > 1:
        fields["DISPLAY_NAME"] = heads[1]
    return fields, controls


def parse_sc_query(text: str) -> ScQuery | None:
    """Parse the first ``SERVICE_NAME:`` block; None when the text holds none."""
    fields, controls = _block_fields(text)
    if "SERVICE_NAME" not in fields or "STATE" not in fields:
        return None
    state_parts = fields["STATE"].split()
    try:
        code = int(state_parts[0])
    except (IndexError, ValueError):
        return None
    name = state_parts[1] if len(state_parts) > 1 else SC_STATES.get(code, "UNKNOWN")
    pid = _leading_int(fields.get("PID", ""))
    return ScQuery(
        service_name=fields["SERVICE_NAME"],
        state_code=code,
        state_name=name,
        controls=controls,
        win32_exit_code=_leading_int(fields.get("WIN32_EXIT_CODE", "")) or 0,
        service_exit_code=_leading_int(fields.get("SERVICE_EXIT_CODE", "")) or 0,
        pid=pid or None,
        flags=fields.get("FLAGS", ""),
        fields=fields,
    )


def _leading_int(value: str) -> int | None:
    m = re.match(r"\s*(\d+)", value)
    return int(m.group(1)) if m else None


# --------------------------------------------------------------------------- NSSM

_NSSM_STATES: dict[str, ServiceState] = {"SERVICE_" + k: v for k, v in _STATE_MAP.items()}


def parse_nssm_status(text: str) -> ServiceState | None:
    """``SERVICE_RUNNING`` etc. (any encoding already decoded); None if not recognised."""
    for token in text.split():
        if token in _NSSM_STATES:
            return _NSSM_STATES[token]
    return None


def classify_nssm_error(text: str) -> ServiceErrorKind:
    """NSSM prints Win32 messages (``OpenService(): Access is denied.``); English only."""
    lowered = text.lower()
    if "does not exist" in lowered or "no such service" in lowered:
        return ServiceErrorKind.NOT_FOUND
    if "access is denied" in lowered:
        return ServiceErrorKind.ACCESS_DENIED
    return ServiceErrorKind.FAILED


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
