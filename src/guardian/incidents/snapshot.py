"""A point-in-time picture of the machine for an incident report.

OS, uptime, CPU, memory and disks come from psutil (cheap, local). GPU and ComfyUI are
*not* probed again: a report is written while something is already failing, and a second
NVML/HTTP probe could hang or disagree with what the checks saw. Instead their sections
quote the latest results of the ``gpu`` and ``comfyui`` checks.

A report must be written even when the machine is in trouble, so nothing here may block
for long: the sections are gathered at once in the ``snapshot`` :mod:`guardian.support.blocking`
pool under one deadline, each disk's statfs goes through the ``disk`` pool under its own
(a mount the disk check already found stuck is named at once, without a new thread), and
whatever did not answer in time says so in its section instead of holding the report.
"""

from __future__ import annotations

import os
import platform
import socket
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from functools import partial
from typing import Any, Protocol

import psutil

from guardian.checks.disk import statfs_key
from guardian.checks.registry import REGISTRY, spec
from guardian.support.blocking import BlockingError, CallTimedOut, Pending, pool

Snapshot = dict[str, list[str]]  # section title -> lines
SnapshotFn = Callable[[], Snapshot]

_SKIP_FS = {"squashfs", "tmpfs", "devtmpfs", "overlay", "proc", "sysfs", "cgroup", "cgroup2"}
MAX_DISKS = 20
SNAPSHOT_DEADLINE = 8.0  # seconds for all of psutil's sections together
DISK_DEADLINE = 2.0  # seconds for one mount's statfs


class ResultLike(Protocol):
    """What a snapshot reads from a check result (live CheckResult or a stored one)."""

    @property
    def target(self) -> str: ...
    @property
    def check(self) -> str: ...
    @property
    def kind(self) -> str: ...
    @property
    def status(self) -> Any: ...
    @property
    def reason(self) -> str: ...
    @property
    def values(self) -> Mapping[str, Any]: ...
    @property
    def finished(self) -> datetime: ...


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    return f"{days}d {hours}h {rest // 60}m"


def _os_section() -> list[str]:
    lines = [
        f"system: {platform.system()} {platform.release()} ({platform.version()})",
        f"machine: {platform.machine()}",
        f"host: {socket.gethostname()}",
        f"python: {platform.python_version()}",
    ]
    try:
        lines.append(f"uptime: {_duration(time.time() - psutil.boot_time())}")
    except Exception as e:
        lines.append(f"uptime: unavailable ({e})")
    return lines


def _cpu_section() -> list[str]:
    lines = [
        f"cores: {psutil.cpu_count(logical=False) or '?'} physical, "
        f"{psutil.cpu_count() or '?'} logical",
        f"usage: {psutil.cpu_percent(interval=0.1):.0f}%",
    ]
    if hasattr(os, "getloadavg"):
        try:
            one, five, fifteen = os.getloadavg()
            lines.append(f"load: {one:.2f} {five:.2f} {fifteen:.2f}")
        except OSError:
            pass
    return lines


def _memory_section() -> list[str]:
    vm = psutil.virtual_memory()
    sw = psutil.swap_memory()
    return [
        f"ram: {_gib(vm.used)} used of {_gib(vm.total)} ({vm.percent:.0f}%), "
        f"{_gib(vm.available)} available",
        f"swap: {_gib(sw.used)} used of {_gib(sw.total)} ({sw.percent:.0f}%)",
    ]


def _disk_section(budget: float = SNAPSHOT_DEADLINE - 1.0) -> list[str]:
    lines: list[str] = []
    seen: set[str] = set()
    end = time.monotonic() + budget
    disks = pool("disk")
    for part in psutil.disk_partitions(all=False):
        if part.fstype in _SKIP_FS or part.mountpoint in seen:
            continue
        if part.mountpoint.startswith(("/snap", "/boot/efi")):
            continue
        seen.add(part.mountpoint)
        left = end - time.monotonic()
        if left <= 0:
            lines.append(f"{part.mountpoint}: not measured (snapshot deadline reached)")
            continue
        try:
            du = disks.call(
                partial(psutil.disk_usage, part.mountpoint),
                min(DISK_DEADLINE, left),
                key=statfs_key(part.mountpoint),
                what="statfs",
            )
        except OSError as e:  # CD drive without media, vanished mount
            lines.append(f"{part.mountpoint}: unavailable ({e.strerror or e})")
            continue
        except BlockingError as e:  # a hung network share or FUSE mount
            lines.append(f"{part.mountpoint}: unavailable ({e})")
            continue
        lines.append(
            f"{part.mountpoint} ({part.fstype}): {_gib(du.free)} free of {_gib(du.total)} "
            f"({du.percent:.0f}% used)"
        )
        if len(lines) >= MAX_DISKS:
            break
    return lines or ["no disks found"]


def snapshot_kinds() -> list[str]:
    """The kinds whose latest results a snapshot quotes (the registry's ``snapshot``)."""
    return [s.kind for s in REGISTRY if s.snapshot]


def check_sections(results: Iterable[ResultLike]) -> Snapshot:
    """GPU/ComfyUI sections quoted from the latest results of those check kinds."""
    sections: Snapshot = {}
    for r in sorted(results, key=lambda r: (r.kind, r.target, r.check)):
        title = spec(r.kind).snapshot
        if title is None:
            continue
        lines = sections.setdefault(title, [])
        stamp = r.finished.strftime("%Y-%m-%d %H:%M:%S UTC")
        reason = f": {r.reason}" if r.reason else ""
        lines.append(f"{r.target}/{r.check} {r.status} at {stamp}{reason}")
        lines.extend(f"  {k}: {v}" for k, v in sorted(r.values.items()))
    return sections


SECTIONS: tuple[tuple[str, Callable[[], list[str]]], ...] = (
    ("OS", _os_section),
    ("CPU", _cpu_section),
    ("Memory", _memory_section),
    ("Disks", _disk_section),
)


def system_snapshot(
    results: Iterable[ResultLike] = (),
    *,
    sections: Iterable[tuple[str, Callable[[], list[str]]]] = SECTIONS,
    deadline: float = SNAPSHOT_DEADLINE,
) -> Snapshot:
    """The default snapshot: psutil's view now plus the given GPU/ComfyUI results.

    Never takes much longer than ``deadline``: a section still running then is listed as
    ``unavailable: <what> did not return within <deadline> s``.
    """
    snap: Snapshot = {}
    end = time.monotonic() + deadline
    workers = pool("snapshot")
    started: list[tuple[str, Pending[list[str]] | BaseException]] = []
    for title, part in sections:
        try:
            started.append(
                (title, workers.submit(part, deadline, key=f"snapshot:{title}", what=title))
            )
        except BlockingError as e:
            started.append((title, e))
    for title, pending in started:
        try:
            if isinstance(pending, BaseException):
                raise pending
            snap[title] = pending.wait(end - time.monotonic())
        except CallTimedOut:
            snap[title] = [f"unavailable: {title} did not return within {deadline:g} s"]
        except BlockingError as e:  # still stuck from an earlier snapshot, or no worker
            snap[title] = [f"unavailable: {e}"]
        except Exception as e:  # a snapshot must never stop a report
            snap[title] = [f"unavailable: {e}"]
    checks = check_sections(results)
    snap["GPU"] = checks.get("GPU", ["no GPU check result"])
    snap["ComfyUI"] = checks.get("ComfyUI", ["no ComfyUI check result"])
    return snap


class _ResultSource(Protocol):
    def results(self, target: str | None = None) -> Any: ...


def state_snapshot(state: _ResultSource) -> SnapshotFn:
    """A snapshot function reading GPU/ComfyUI from a running Guardian's State."""

    def take() -> Snapshot:
        return system_snapshot(r for r in state.results() if spec(r.kind).snapshot)

    return take
