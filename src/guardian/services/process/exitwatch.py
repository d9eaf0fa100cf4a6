"""Learn the instant a process exits, whether or not Guardian is its parent.

A process a previous Guardian started is not our child: ``waitpid`` cannot see it. The
kernel can still tell us: on Linux a pidfd (``os.pidfd_open``) becomes readable when its
process exits, so the event loop wakes at once (``loop.add_reader``); on Windows a
process handle is signalled, waited on in a small thread. Our own children go the same
way, so an adopted process's exit is seen exactly as fast as a child's. Where neither
exists (old kernels, macOS) a bounded poll is the fallback.

The pidfd is opened *before* the start time is re-checked, so it refers to the recorded
process and not to a newcomer that took the pid in between.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import os
import sys
import threading
from collections.abc import Callable
from typing import Any

from guardian.services.process.identity import ProcessIdentity, is_alive, same_process

POLL_INTERVAL = 0.05  # seconds between liveness polls where no exit event exists
IS_WINDOWS = sys.platform == "win32"

# Windows access rights and constants (winnt.h).
_SYNCHRONIZE = 0x00100000
_PROCESS_QUERY_LIMITED_INFORMATION = 0x1000
_WAIT_OBJECT_0 = 0
_WAIT_SLICE_MS = 250  # the waiting thread re-checks for cancellation this often


class ExitWatcher:
    """Resolves :attr:`exited` when the process ``ident`` exits; :meth:`close` to stop.

    ``reap`` (our own children) is called once the exit is seen and returns the exit
    code; for adopted processes the code is unknown (None) except on Windows.
    """

    def __init__(
        self,
        ident: ProcessIdentity,
        *,
        reap: Callable[[], int | None] | None = None,
        poll_interval: float = POLL_INTERVAL,
    ) -> None:
        self.ident = ident
        self._reap = reap
        self.poll_interval = poll_interval
        self._loop = asyncio.get_running_loop()
        self.exited: asyncio.Future[int | None] = self._loop.create_future()
        self.how = "poll"
        self._fd: int | None = None
        self._task: asyncio.Task[None] | None = None
        self._stop = threading.Event()
        self._start()

    # ----------------------------------------------------------------- setup

    def _start(self) -> None:
        if not IS_WINDOWS and hasattr(os, "pidfd_open"):
            try:
                fd = os.pidfd_open(self.ident.pid)
            except OSError:
                fd = None  # gone already, or a kernel without pidfds: decide below
            if fd is not None:
                if not same_process(self.ident):
                    os.close(fd)  # the pid belongs to someone else now: ours has exited
                    self._resolve(None)
                    return
                self._fd = fd
                self.how = "pidfd"
                self._loop.add_reader(fd, self._on_readable)
                return
        if IS_WINDOWS and self._start_windows():
            return
        self._task = self._loop.create_task(self._poll())

    def _start_windows(self) -> bool:
        try:
            _winapi: Any = importlib.import_module("_winapi")
            handle = _winapi.OpenProcess(
                _SYNCHRONIZE | _PROCESS_QUERY_LIMITED_INFORMATION, False, self.ident.pid
            )
        except (ImportError, OSError):
            return False
        if not same_process(self.ident):
            _winapi.CloseHandle(handle)
            self._resolve(None)
            return True
        self.how = "handle"
        thread = threading.Thread(
            target=self._wait_windows, args=(handle,), name=f"exit-{self.ident.pid}", daemon=True
        )
        thread.start()
        return True

    def _wait_windows(self, handle: int) -> None:
        _winapi: Any = importlib.import_module("_winapi")

        try:
            while not self._stop.is_set():
                if _winapi.WaitForSingleObject(handle, _WAIT_SLICE_MS) == _WAIT_OBJECT_0:
                    code: int | None = None
                    with contextlib.suppress(OSError):
                        code = int(_winapi.GetExitCodeProcess(handle))
                    with contextlib.suppress(RuntimeError):  # loop closed meanwhile
                        self._loop.call_soon_threadsafe(self._resolve, code)
                    return
        finally:
            _winapi.CloseHandle(handle)

    # ----------------------------------------------------------------- events

    def _on_readable(self) -> None:
        self._close_fd()
        self._resolve(None)

    async def _poll(self) -> None:
        # No exit event on this platform: a fixed, bounded poll is the fallback.
        while is_alive(self.ident):  # noqa: ASYNC110
            await asyncio.sleep(self.poll_interval)
        self._resolve(None)

    def _resolve(self, code: int | None) -> None:
        if self.exited.done():
            return
        if self._reap is not None:
            reaped = self._reap()
            code = reaped if reaped is not None else code
        self.exited.set_result(code)

    def _close_fd(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self._fd)
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None

    def close(self) -> None:
        """Stop watching (the process keeps running); releases the fd, thread or task."""
        self._close_fd()
        self._stop.set()
        if self._task is not None:
            self._task.cancel()
            self._task = None
        if not self.exited.done():
            self.exited.cancel()
