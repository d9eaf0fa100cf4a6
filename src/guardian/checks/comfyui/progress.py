"""Progress signals for a ComfyUI job Guardian did not submit, judged from outside.

Execution events go only to the submitting websocket client, so a foreign job's progress is
read off the process instead: CPU time of the service's process tree, GPU utilisation of
those processes (NVML, where it reports per-process use), new output in the service's log
(ComfyUI prints tqdm lines) and the history moving. A job is stuck only when none of them
moved over a whole window: a long job that computes is never stuck, one in a sleep is.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from guardian.checks.base import CheckContext
from guardian.core.result import Value
from guardian.gpu import GpuQueryError, NoGpu
from guardian.gpu.nvml import Nvml, load_pynvml

log = logging.getLogger("guardian.checks.comfyui.progress")

# Lines ComfyUI 0.3.64 logs for a request, not for work (capture control_route_bodies.json):
# the three answers to POST /interrupt and a new prompt arriving.
CHATTER = re.compile(
    r"^(?:Global interrupt \(no prompt_id specified\)|Interrupting prompt \S+"
    r"|Prompt \S+ is not currently running, skipping interrupt|got prompt)\s*$"
)
LOG_READ_MAX = 1 << 20  # more new output than this in one window is progress, unread

ProcKey = tuple[int, float]  # (pid, create_time): a pid reused by another process differs


@dataclass(frozen=True, slots=True)
class ProgressSample:
    """What the signals read at one moment (monotonic ``at``); None: signal unavailable."""

    at: float
    pid: int | None = None
    cpu: dict[ProcKey, float] | None = None  # CPU seconds per process of the tree
    gpu_percent: float | None = None  # highest SM use of the tree's processes since last read
    log_sig: str | None = None
    history_sig: str | None = None


@dataclass(frozen=True, slots=True)
class Progress:
    """The verdict over one window, with the evidence as ``progress_*`` values."""

    moved: bool | None  # None: no process-level signal to judge by
    values: dict[str, Value] = field(default_factory=dict)
    evidence: str = ""  # e.g. "CPU +0.01 s < 2 s, log unchanged, history unchanged"


def cpu_delta(old: dict[ProcKey, float], new: dict[ProcKey, float]) -> float:
    """CPU seconds the tree spent between two samples; a process new since ``old`` counts
    in full (all its CPU time is new), one that exited takes its time with it."""
    return sum(max(0.0, cpu - old.get(key, 0.0)) for key, cpu in new.items())


def judge(
    samples: list[ProgressSample], window: float, cpu_min: float, gpu_min: float
) -> Progress | None:
    """Progress over the last ``window`` seconds, or None while no sample is that old."""
    if not samples:
        return None
    new = samples[-1]
    base = next((s for s in reversed(samples) if new.at - s.at >= window), None)
    if base is None:
        return None
    span = new.at - base.at
    values: dict[str, Value] = {"progress_window_s": round(span, 1)}
    signals: list[str] = []
    parts: list[str] = []
    moved = False
    process_signal = False
    if base.cpu is not None and new.cpu is not None:
        spent = cpu_delta(base.cpu, new.cpu)
        values["progress_cpu_s"] = round(spent, 3)
        values["progress_cpu_min"] = cpu_min
        signals.append("cpu")
        process_signal = True
        if spent >= cpu_min:
            moved = True
            parts.append(f"CPU +{spent:.2f} s >= {cpu_min:g} s")
        else:
            parts.append(f"CPU +{spent:.2f} s < {cpu_min:g} s")
    gpu = [s.gpu_percent for s in samples if s.at > base.at and s.gpu_percent is not None]
    if gpu:
        peak = max(gpu)
        values["progress_gpu_percent"] = peak
        signals.append("gpu")
        process_signal = True
        if peak >= gpu_min:
            moved = True
        parts.append(f"GPU {peak:.0f}% {'>=' if peak >= gpu_min else '<'} {gpu_min:g}%")
    if base.log_sig is not None and new.log_sig is not None:
        changed = base.log_sig != new.log_sig
        values["progress_log_changed"] = changed
        signals.append("log")
        process_signal = True
        moved = moved or changed
        parts.append("new log output" if changed else "log unchanged")
    if base.history_sig is not None and new.history_sig is not None:
        changed = base.history_sig != new.history_sig
        values["progress_history_moved"] = changed
        signals.append("history")
        moved = moved or changed
        parts.append("history moved" if changed else "history unchanged")
    if new.pid is not None:
        values["progress_pid"] = new.pid
    values["progress_signals"] = ",".join(signals) or "none"
    values["progress_moved"] = moved if (process_signal or moved) else None
    if not process_signal and not moved:
        return Progress(None, values, ", ".join(parts) or "no signals")
    return Progress(moved, values, ", ".join(parts))


class ProgressProbe:
    """Reads the signals for one ComfyUI service. Every blocking call runs in a thread."""

    def __init__(
        self, ctx: CheckContext, port: int | None, log_file: Path | None, *, gpu: bool = True
    ) -> None:
        self.ctx = ctx
        self.port = port
        self.log_file = log_file
        self._listener: ProcKey | None = None
        self._gpu_enabled = gpu
        self._nvml: Nvml | None = None
        self._gpu_last_ts: dict[int, int] = {}
        self._log_pos: int | None = None  # bytes of the log file already looked at
        self._log_changes = 0

    async def sample(self, history_sig: str | None) -> ProgressSample:
        pid = await self._root_pid()
        cpu = await asyncio.to_thread(tree_cpu, pid) if pid is not None else None
        gpu = None
        if cpu is not None and self._gpu_enabled:
            gpu = await asyncio.to_thread(self._gpu_percent, {k[0] for k in cpu})
        return ProgressSample(
            at=self.ctx.clock.monotonic(),
            pid=pid,
            cpu=cpu,
            gpu_percent=gpu,
            log_sig=await self._log_sig(),
            history_sig=history_sig,
        )

    async def _root_pid(self) -> int | None:
        """The backend's pid; else the process listening on ComfyUI's port."""
        service = self.ctx.service
        if service is not None:
            try:
                status = await service.status()
            except Exception as exc:  # a backend error only costs this signal
                log.debug("service status for progress failed: %s", exc)
            else:
                if status.pid:
                    return status.pid
        if self.port is None:
            return None
        if self._listener is not None and await asyncio.to_thread(_alive, self._listener):
            return self._listener[0]
        self._listener = await asyncio.to_thread(find_listener, self.port)
        return self._listener[0] if self._listener is not None else None

    async def _log_sig(self) -> str | None:
        """A count of the log file's new output, or a hash of the service's last log lines;
        request chatter (see :data:`CHATTER`) is not output: Guardian's own /interrupt
        makes ComfyUI log a line, and that must not pass for the stuck job's progress."""
        if self.log_file is not None:
            try:
                grew = await asyncio.to_thread(self._log_grew, self.log_file)
            except OSError:
                return None
            self._log_changes += grew
            return str(self._log_changes)
        if self.ctx.service is None:
            return None
        try:
            lines = await self.ctx.service.log_tail(20)
        except Exception as exc:
            log.debug("log tail for progress failed: %s", exc)
            return None
        lines = [line for line in lines if not CHATTER.match(line)][-5:]
        if not lines:
            return None
        return hashlib.sha1("\n".join(lines).encode("utf-8", "replace")).hexdigest()

    def _log_grew(self, path: Path) -> bool:
        """Whether ``path`` got output other than request chatter since the last call
        (a file that shrank was rotated or truncated: that counts as output)."""
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            start, self._log_pos = self._log_pos, size
            if start is None or size == start:
                return False
            if size < start or size - start > LOG_READ_MAX:
                return True
            fh.seek(start)
            text = fh.read(size - start).decode("utf-8", "replace")
        parts = re.split(r"[\r\n]+", text)
        return any(part.strip() and not CHATTER.match(part) for part in parts)

    def _gpu_percent(self, pids: set[int]) -> float | None:
        """Highest SM utilisation of ``pids`` on any GPU; None without NVML or a GPU."""
        if self._nvml is None:
            module = load_pynvml()
            if module is None:
                self._gpu_enabled = False
                return None
            nvml = Nvml(module)
            try:
                nvml.open()
            except (NoGpu, GpuQueryError):
                self._gpu_enabled = False
                return None
            self._nvml = nvml
        try:
            return gpu_process_percent(self._nvml.nv, pids, self._gpu_last_ts)
        except Exception as exc:  # NVML trouble costs this signal, never the check
            log.debug("NVML process utilisation failed: %s", exc)
            return None

    def close(self) -> None:
        if self._nvml is not None:
            self._nvml.close()
            self._nvml = None


def gpu_process_percent(nv: Any, pids: set[int], last_ts: dict[int, int]) -> float | None:
    """Per-process SM use (``nvmlDeviceGetProcessUtilization``) where the board reports it,
    else the device's utilisation when one of ``pids`` runs compute work on it."""
    best: float | None = None
    for index in range(int(nv.nvmlDeviceGetCount())):
        handle = nv.nvmlDeviceGetHandleByIndex(index)
        try:
            samples = nv.nvmlDeviceGetProcessUtilization(handle, last_ts.get(index, 0))
        except nv.NVMLError:
            samples = None
        if samples is not None:
            mine = [s for s in samples if int(s.pid) in pids]
            if samples:
                last_ts[index] = max(int(s.timeStamp) for s in samples)
            if mine:
                best = max(best or 0.0, max(float(s.smUtil) for s in mine))
            elif best is None:
                best = 0.0
            continue
        with contextlib.suppress(nv.NVMLError):
            running = {int(p.pid) for p in nv.nvmlDeviceGetComputeRunningProcesses(handle)}
            if running & pids:
                util = float(nv.nvmlDeviceGetUtilizationRates(handle).gpu)
                best = max(best or 0.0, util)
            elif best is None:
                best = 0.0
    return best


def tree_cpu(pid: int) -> dict[ProcKey, float] | None:
    """CPU seconds (user + system) of ``pid`` and every descendant; None if it is gone."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return None
    out: dict[ProcKey, float] = {}
    for proc in procs:
        try:
            with proc.oneshot():
                times = proc.cpu_times()
                out[(proc.pid, proc.create_time())] = times.user + times.system
        except psutil.Error:
            continue  # exited between listing and reading
    return out or None


def find_listener(port: int) -> ProcKey | None:
    """The process listening on TCP ``port`` (needs rights to see it; None otherwise)."""
    try:
        conns = psutil.net_connections(kind="tcp")
    except (psutil.Error, OSError):
        return None
    for conn in conns:
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port:
            if conn.pid is None:
                continue
            try:
                return conn.pid, psutil.Process(conn.pid).create_time()
            except psutil.Error:
                continue
    return None


def _alive(key: ProcKey) -> bool:
    try:
        return psutil.Process(key[0]).create_time() == key[1]
    except psutil.Error:
        return False
