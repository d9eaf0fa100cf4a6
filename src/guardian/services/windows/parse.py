"""Reading what sc.exe and nssm.exe print: status blocks, error lines, NSSM states.

Apart from the backend so the parsers can be read and tested on recorded output alone
(tests/data/windows). sc.exe messages are localised, so errors are recognised by their
numeric code (``FAILED 1060:``), never by their words; on some languages (e.g. Russian)
even the block's field names are, so a block is also read by its fields' order.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from guardian.services.base import ServiceErrorKind, ServiceState, ServiceStatus

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
