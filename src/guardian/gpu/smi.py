"""``nvidia-smi --query-gpu`` as a fallback when NVML cannot be loaded.

One CSV row per GPU (``--format=csv,noheader,nounits``). Bracketed cells are the driver's
way of saying "no value": ``[N/A]`` and ``[Not Supported]`` just mean the board lacks the
sensor; anything else in brackets (``[Unknown Error]``, ``[GPU requires reset]``) is a real
error. Lines that are not rows are the tool talking about trouble, e.g. "Unable to
determine the device handle for GPU 0000:41:00.0: Unknown Error" for a GPU that fell off
the bus while the others still answer.

A wedged driver can leave nvidia-smi in an uninterruptible sleep where even SIGKILL does
not end it. Waiting for such a process is bounded, and while it is still alive no second
one is started for the same executable: the check says which pid is stuck and since when.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from guardian.gpu import GpuInfo, GpuQueryError, NoGpu

FIELDS = (
    "index",
    "name",
    "uuid",
    "utilization.gpu",
    "memory.used",
    "memory.total",
    "temperature.gpu",
    "power.draw",
    "power.limit",
    "retired_pages.pending",
    "ecc.errors.uncorrected.volatile.total",
)
FORMAT = "--format=csv,noheader,nounits"
ABSENT = frozenset({"[N/A]", "[Not Supported]", "N/A", "Not Supported", ""})
NO_DEVICES = "No devices were found"

REAP_S = 2.0  # how long to wait for a killed nvidia-smi before leaving it behind
MAX_STUCK = 4  # unkillable nvidia-smi processes tolerated before refusing to start more

# executable -> (process, monotonic time it was started) for runs that would not die
_stuck: dict[str, tuple[asyncio.subprocess.Process, float]] = {}

# Installed by older Windows drivers outside PATH.
_WINDOWS_NVSMI = Path(r"C:\Program Files\NVIDIA Corporation\NVSMI\nvidia-smi.exe")


def query_argv(executable: str) -> list[str]:
    return [executable, "--query-gpu=" + ",".join(FIELDS), FORMAT]


def find_nvidia_smi(explicit: str | None = None) -> str | None:
    """The nvidia-smi to run: an explicit path, else PATH, else the old Windows location."""
    if explicit:
        return explicit if Path(explicit).is_file() else None
    found = shutil.which("nvidia-smi")
    if found:
        return found
    if os.name == "nt" and _WINDOWS_NVSMI.is_file():
        return str(_WINDOWS_NVSMI)
    return None


def _number(cell: str, field: str, errors: list[str]) -> float | None:
    if cell in ABSENT:
        return None
    if cell.startswith("["):
        errors.append(f"{field} {cell}")
        return None
    try:
        return float(cell)
    except ValueError:
        errors.append(f"{field} {cell!r} is not a number")
        return None


def _yes_no(cell: str, field: str, errors: list[str]) -> bool | None:
    if cell in ABSENT:
        return None
    if cell.lower() in ("yes", "no"):
        return cell.lower() == "yes"
    errors.append(f"{field} {cell}")
    return None


def parse_row(cells: list[str]) -> GpuInfo:
    """One CSV row in :data:`FIELDS` order."""
    errors: list[str] = []
    values = dict(zip(FIELDS, (c.strip() for c in cells), strict=True))
    ecc = _number(values["ecc.errors.uncorrected.volatile.total"], "ECC", errors)
    return GpuInfo(
        index=int(values["index"]),
        name=values["name"],
        uuid=values["uuid"] if values["uuid"] not in ABSENT else None,
        utilization_percent=_number(values["utilization.gpu"], "utilization.gpu", errors),
        memory_used_mb=_number(values["memory.used"], "memory.used", errors),
        memory_total_mb=_number(values["memory.total"], "memory.total", errors),
        temperature_c=_number(values["temperature.gpu"], "temperature.gpu", errors),
        power_draw_w=_number(values["power.draw"], "power.draw", errors),
        power_limit_w=_number(values["power.limit"], "power.limit", errors),
        retired_pages_pending=_yes_no(
            values["retired_pages.pending"], "retired_pages.pending", errors
        ),
        ecc_uncorrected=int(ecc) if ecc is not None else None,
        errors=tuple(errors),
    )


def parse_output(text: str) -> tuple[list[GpuInfo], list[str]]:
    """Rows and the tool's complaint lines from one run's combined output.

    Raises :class:`NoGpu` for "No devices were found" and :class:`GpuQueryError` when
    nothing at all could be read (the driver error text becomes the message).
    """
    gpus: list[GpuInfo] = []
    complaints: list[str] = []
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in lines:
        cells = next(csv.reader([line], skipinitialspace=True))
        if len(cells) == len(FIELDS) and cells[0].strip().isdigit():
            gpus.append(parse_row(cells))
        else:
            complaints.append(line)
    if not gpus:
        if any(NO_DEVICES in line for line in complaints):
            raise NoGpu(NO_DEVICES)
        raise GpuQueryError(" ".join(complaints) or "nvidia-smi printed nothing")
    return gpus, complaints


def _refuse_if_stuck(executable: str) -> None:
    """Raise while an earlier, killed nvidia-smi of ``executable`` is still alive."""
    for path, (proc, _) in list(_stuck.items()):
        if proc.returncode is not None:
            del _stuck[path]
    found = _stuck.get(executable)
    if found is not None:
        proc, started = found
        raise GpuQueryError(
            f"nvidia-smi (pid {proc.pid}) still blocked since "
            f"{time.monotonic() - started:.0f} s, even after SIGKILL (driver hung?)"
        )
    if len(_stuck) >= MAX_STUCK:
        raise GpuQueryError(f"{len(_stuck)} nvidia-smi processes stuck, not starting another")


async def _reaped(proc: asyncio.subprocess.Process) -> bool:
    """Whether a killed process ended within :data:`REAP_S` (not so in uninterruptible sleep)."""
    try:
        await asyncio.wait_for(proc.wait(), REAP_S)
    except TimeoutError:
        return False
    return True


async def query(executable: str, limit_s: float) -> tuple[list[GpuInfo], list[str]]:
    """Run nvidia-smi once (argv, no shell) and parse what it printed.

    A driver that hangs nvidia-smi is common when a GPU is wedged: past ``limit_s`` the
    process is killed and that becomes the error.
    ``limit_s`` sits inside the engine's timeout so we report it before being cancelled.
    """
    _refuse_if_stuck(executable)
    # a service has no console: keep nvidia-smi from flashing one up
    flags = 0
    if sys.platform == "win32":
        flags = subprocess.CREATE_NO_WINDOW
    try:
        proc = await asyncio.create_subprocess_exec(
            *query_argv(executable),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            creationflags=flags,
        )
    except OSError as exc:
        raise GpuQueryError(f"cannot run {executable}: {exc.strerror or exc}") from exc
    started = time.monotonic()
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), limit_s)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        if not await _reaped(proc):
            _stuck[executable] = (proc, started)
        raise GpuQueryError(f"nvidia-smi did not answer within {limit_s:g}s") from None
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        raise
    text = out.decode("utf-8", errors="replace")
    try:
        return parse_output(text)
    except GpuQueryError as exc:
        if proc.returncode:
            raise GpuQueryError(f"{exc} (exit code {proc.returncode})") from None
        raise
