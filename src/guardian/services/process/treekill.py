"""Stopping a supervised process *and everything it started*, on POSIX and on Windows.

ComfyUI's workers, a ``sh -c`` wrapper's child, a panel's ``node`` under ``npm``: a stop
that reaches only the leader leaves the port and the VRAM held. POSIX: the service leads
its own process group (``start_new_session``), so one ``killpg`` reaches the group; the
descendants that left it (their own ``setsid``) are found through the process tree and
signalled one by one. A process frozen with SIGSTOP holds SIGTERM until it runs again, so
SIGCONT follows SIGTERM (as systemd does) and a stop does not wait out ``stop_timeout``.
Windows has no groups to signal: ``taskkill /T /F /PID <pid>`` ends the tree.

Every signal goes through :mod:`guardian.services.process.identity`: pid *and* start time first.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import sys
from typing import Protocol

import psutil

from guardian.services.process.identity import (
    ProcessIdentity,
    descendants,
    same_process,
    signal_group,
    signal_process,
)
from guardian.services.subproc import run_command

log = logging.getLogger("guardian.services.process.treekill")

TASKKILL_TIMEOUT = 15.0


class TreeStopper(Protocol):
    """How one platform asks a process tree to stop, then forces it."""

    async def terminate(self, ident: ProcessIdentity, *, own_child: bool) -> None: ...

    async def kill(self, ident: ProcessIdentity) -> None: ...

    def kill_leftovers(self, ident: ProcessIdentity) -> None:
        """After the leader exited: end what is left of its group (never a stranger)."""
        ...


class PosixTree:
    """SIGTERM + SIGCONT to the group and every descendant, SIGKILL to force."""

    def __init__(self) -> None:
        self._seen: dict[int, list[ProcessIdentity]] = {}  # leader pid -> tree at terminate

    def _tree(self, ident: ProcessIdentity) -> list[ProcessIdentity]:
        known = {p.pid: p for p in self._seen.get(ident.pid, [])}
        for p in descendants(ident):
            known.setdefault(p.pid, p)
        tree = list(known.values())
        self._seen[ident.pid] = tree
        return tree

    def _send(self, ident: ProcessIdentity, sig: int) -> None:
        tree = self._tree(ident)
        if not signal_group(ident, sig):
            signal_process(ident, sig)
        for member in tree:
            if ident.pgid is not None and _pgid(member.pid) == ident.pgid:
                continue  # the group signal reached it already
            signal_process(member, sig)

    async def terminate(self, ident: ProcessIdentity, *, own_child: bool) -> None:
        self._send(ident, signal.SIGTERM)
        # A stopped process keeps SIGTERM pending until it is continued.
        self._send(ident, signal.SIGCONT)

    async def kill(self, ident: ProcessIdentity) -> None:
        self._send(ident, signal.SIGKILL)

    def kill_leftovers(self, ident: ProcessIdentity) -> None:
        signal_group(ident, signal.SIGKILL)
        for member in self._seen.pop(ident.pid, []):
            signal_process(member, signal.SIGKILL)


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None


class WindowsTree:
    """CTRL_BREAK to our own console group, then ``taskkill /T /F /PID`` for the tree.

    ``taskkill`` is looked up on PATH (``taskkill.exe`` on Windows), so tests run a fake.
    Without it the tree is killed through psutil, leaves first.
    """

    def __init__(self, tool: str | None = None) -> None:
        self.tool = tool

    async def terminate(self, ident: ProcessIdentity, *, own_child: bool) -> None:
        ctrl_break = getattr(signal, "CTRL_BREAK_EVENT", None)
        if own_child and ctrl_break is not None and same_process(ident):
            # Only a child started with CREATE_NEW_PROCESS_GROUP by us can receive it.
            with contextlib.suppress(OSError):
                os.kill(ident.pid, ctrl_break)

    async def kill(self, ident: ProcessIdentity) -> None:
        if not same_process(ident):
            return
        tool = self.tool or shutil.which("taskkill.exe") or shutil.which("taskkill")
        if tool is not None:
            argv = [tool, "/T", "/F", "/PID", str(ident.pid)]
            try:
                result = await run_command(argv, timeout=TASKKILL_TIMEOUT)
            except (OSError, TimeoutError) as exc:
                log.warning("taskkill for pid %s failed: %s", ident.pid, exc)
            else:
                if result.rc == 0:
                    return
                log.warning(
                    "taskkill /T /F /PID %s: exit %s: %s",
                    ident.pid,
                    result.rc,
                    (result.stdout + result.stderr).strip()[:300],
                    extra={"event": "taskkill_failed"},
                )
        for member in [*reversed(descendants(ident)), ident]:
            with contextlib.suppress(psutil.Error):
                if same_process(member):
                    psutil.Process(member.pid).kill()

    def kill_leftovers(self, ident: ProcessIdentity) -> None:
        """Windows has no group that outlives its leader to sweep."""


def default_tree() -> TreeStopper:
    return WindowsTree() if sys.platform == "win32" else PosixTree()
