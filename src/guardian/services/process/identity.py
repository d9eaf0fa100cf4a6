"""Who a pid is: pid + start time (+ process group), and signals that honour it.

A pid alone names a process only while it lives; once it exits the kernel hands the
number to the next process. So every signal Guardian sends goes through here and is sent
only when the live process with that pid was started at the recorded time. For process
groups the kernel gives a guarantee we lean on: a pid is never reused while a process
group or session with that ID still exists. A group whose leader is gone is therefore
still ours as long as no *different* process now holds the leader's pid.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from dataclasses import dataclass
from typing import Any

import psutil

# psutil derives the start time from boot time + clock ticks: exact to 10 ms on Linux,
# to 100 ns on Windows. A different process with the same pid started within this many
# seconds of the recorded one is not a case that can happen in practice.
START_TIME_TOLERANCE = 0.05
IS_WINDOWS = sys.platform == "win32"


@dataclass(frozen=True, slots=True)
class ProcessIdentity:
    """A process as Guardian recorded it."""

    pid: int
    create_time: float  # epoch seconds, as psutil gives it
    pgid: int | None = None  # None on Windows
    # Linux: the start time in clock ticks since boot (/proc/<pid>/stat field 22). Exact,
    # and unlike an epoch it does not move when the wall clock is stepped.
    start_ticks: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "pid": self.pid,
            "create_time": self.create_time,
            "pgid": self.pgid,
            "start_ticks": self.start_ticks,
        }

    def started_as(self, other: ProcessIdentity) -> bool:
        """Same start time as ``other`` (the pid is compared by the caller)."""
        if self.start_ticks is not None and other.start_ticks is not None:
            return self.start_ticks == other.start_ticks
        return abs(self.create_time - other.create_time) <= START_TIME_TOLERANCE

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ProcessIdentity | None:
        """The identity in a record, or None when the record holds none (or garbage)."""
        try:
            pid = int(data["pid"])
            created = float(data["create_time"])
            pgid = None if data.get("pgid") is None else int(data["pgid"])
            ticks = None if data.get("start_ticks") is None else int(data["start_ticks"])
        except (KeyError, TypeError, ValueError):
            return None
        if pid <= 0 or created <= 0 or (pgid is not None and pgid <= 0):
            return None
        return cls(pid, created, pgid, ticks)


def _start_ticks(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            fields = fh.read().rsplit(b")", 1)[1].split()
        return int(fields[19])  # field 22 overall; fields[0] is field 3 (state)
    except (OSError, IndexError, ValueError):
        return None


def _current(pid: int) -> ProcessIdentity | None:
    """The start time of whatever process holds ``pid`` now (zombies included)."""
    try:
        created = psutil.Process(pid).create_time()
    except psutil.Error:
        return None
    return ProcessIdentity(pid, created, None, None if IS_WINDOWS else _start_ticks(pid))


def identify(pid: int) -> ProcessIdentity | None:
    """The identity of the live process ``pid`` now, or None when there is none."""
    current = _current(pid)
    if current is None:
        return None
    pgid: int | None = None
    if not IS_WINDOWS:
        try:
            pgid = os.getpgid(pid)
        except OSError:
            return None
    return ProcessIdentity(pid, current.create_time, pgid, current.start_ticks)


def is_alive(ident: ProcessIdentity) -> bool:
    """True when the process with ``ident``'s pid is the recorded one and has not exited.

    A zombie (exited, not yet reaped) counts as gone: it runs nothing and holds no port.
    """
    if not same_process(ident):
        return False
    try:
        return psutil.Process(ident.pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def same_process(ident: ProcessIdentity) -> bool:
    """True when ``ident``'s pid still belongs to the recorded process (a zombie counts).

    Unlike :func:`is_alive` this answers "may I signal this pid": a zombie of ours still
    holds its pid, so nothing else can have it.
    """
    current = _current(ident.pid)
    return current is not None and current.started_as(ident)


def group_is_ours(ident: ProcessIdentity) -> bool:
    """May ``killpg(ident.pgid)`` be sent without hitting a stranger?

    Yes when the leader is the recorded process, or when no process holds the leader's
    pid at all (then a group with that ID can only be the remains of ours: the kernel does
    not reuse the pid while the group exists). No when a different process took the pid,
    which can only happen after our whole group was gone.
    """
    if ident.pgid is None:
        return False
    if ident.pgid != ident.pid:
        # We only ever record groups the service leads; anything else is not ours to hit.
        return False
    if not psutil.pid_exists(ident.pid):
        return True
    current = _current(ident.pid)
    return current is not None and current.started_as(ident)


def never_signalled(pid: int | None) -> bool:
    """Pids no record may ever make Guardian signal, whatever it says: none, init (for a
    group, ``killpg(1)`` is ``kill(-1)``: every process), Guardian itself and its group."""
    if pid is None or pid <= 1:
        return True
    if pid == os.getpid():
        return True
    return not IS_WINDOWS and pid == os.getpgrp()


def signal_process(ident: ProcessIdentity, sig: int) -> bool:
    """Send ``sig`` to ``ident``'s pid if it still is that process. True when sent."""
    if never_signalled(ident.pid) or not same_process(ident):
        return False
    try:
        if IS_WINDOWS:
            proc = psutil.Process(ident.pid)
            proc.kill() if sig == getattr(signal, "SIGKILL", 9) else proc.terminate()
        else:
            os.kill(ident.pid, sig)
    except (ProcessLookupError, PermissionError, psutil.Error):
        return False
    return True


def signal_group(ident: ProcessIdentity, sig: int) -> bool:
    """Send ``sig`` to ``ident``'s process group when :func:`group_is_ours`. True when sent."""
    if IS_WINDOWS or never_signalled(ident.pgid) or not group_is_ours(ident):
        return False
    assert ident.pgid is not None
    try:
        os.killpg(ident.pgid, sig)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def descendants(ident: ProcessIdentity) -> list[ProcessIdentity]:
    """Every live descendant of ``ident`` (children that left its group included)."""
    if not same_process(ident):
        return []
    out: list[ProcessIdentity] = []
    with contextlib.suppress(psutil.Error):
        for child in psutil.Process(ident.pid).children(recursive=True):
            with contextlib.suppress(psutil.Error):
                found = _current(child.pid)
                if found is not None:
                    out.append(found)
    return out
