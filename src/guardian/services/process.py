"""A process Guardian starts and supervises itself (the backend ``process``).

Why a protocol instead of ``asyncio.create_subprocess_exec`` + ``proc.wait()``: on Python
3.11 ``wait()`` only returns once every pipe is closed, so a grandchild that inherited
stdout would hide the child's death. ``SubprocessProtocol.process_exited`` fires the moment
the child watcher reaps the child, which is what recovery needs (exit -> restart in
milliseconds, no polling). The same protocol receives the merged stdout/stderr and writes it
to the log sink as it arrives.

The child leads its own process group (POSIX ``start_new_session``; Windows
``CREATE_NEW_PROCESS_GROUP``) so ``stop()`` reaches everything it spawned: SIGTERM to the
group, ``stop_timeout`` to comply, then SIGKILL to the group.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import psutil

from guardian.clock import Clock, SystemClock
from guardian.private_file import write_private_text
from guardian.services.base import (
    ExitListener,
    ServiceError,
    ServiceErrorKind,
    ServiceState,
    ServiceStatus,
)
from guardian.services.logfile import LogSink, MemoryLog, RotatingLog, tail_rotated

log = logging.getLogger("guardian.services.process")

KILL_WAIT = 5.0  # seconds to wait for the exit after SIGKILL before giving up
IS_WINDOWS = sys.platform == "win32"


class _ChildProtocol(asyncio.SubprocessProtocol):
    """Copies output into the sink and resolves ``exited`` when the child is reaped."""

    def __init__(self, sink: LogSink, on_exit: _ExitHook) -> None:
        self.sink = sink
        self.on_exit = on_exit
        self.exited: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.SubprocessTransport | None = None
        self.expected = False  # set when Guardian itself stops the child

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.SubprocessTransport)
        self.transport = transport

    def pipe_data_received(self, fd: int, data: bytes | str) -> None:
        try:
            self.sink.write(data if isinstance(data, bytes) else data.encode())
        except OSError:
            log.exception("cannot write the child's output to its log")

    def process_exited(self) -> None:
        code = self.transport.get_returncode() if self.transport is not None else None
        if not self.exited.done():
            self.exited.set_result(code)
        self.on_exit(self, code)


class _ExitHook:
    """Indirection so the protocol never holds the backend strongly typed as a cycle."""

    def __init__(self, backend: ProcessBackend) -> None:
        self.backend = backend

    def __call__(self, proto: _ChildProtocol, code: int | None) -> None:
        self.backend._on_exit(proto, code)


class ProcessBackend:
    """Starts ``argv`` as a child, captures its output, notices its exit instantly."""

    def __init__(
        self,
        target_name: str,
        argv: Sequence[str],
        *,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
        log_file: Path | None = None,
        log_max_bytes: int = 10 * 1024 * 1024,
        log_backups: int = 3,
        stop_timeout: float = 10.0,
        clock: Clock | None = None,
        record: Path | None = None,
    ) -> None:
        if not argv:
            raise ValueError("a supervised process needs a non-empty argv")
        self.name = target_name
        self.argv = [str(a) for a in argv]
        self.cwd = cwd
        self.env = dict(env or {})
        self.log_file = log_file
        self.log_max_bytes = log_max_bytes
        self.log_backups = log_backups
        self.stop_timeout = stop_timeout
        self.clock = clock or SystemClock()
        self._sink: LogSink | None = None
        self._proto: _ChildProtocol | None = None
        self._listeners: list[ExitListener] = []
        self._lock = asyncio.Lock()
        self._last_exit: int | None = None
        self._ever_started = False
        self._restarts = 0
        self._starts = 0
        # Where the running child's pid + start time live, so the next Guardian can find a
        # child that outlived a SIGKILLed Guardian (it runs in its own session).
        self.record = record

    # ----------------------------------------------------------------- protocol

    def add_exit_listener(self, listener: ExitListener) -> None:
        self._listeners.append(listener)

    @property
    def pid(self) -> int | None:
        proto = self._proto
        if proto is None or proto.transport is None or proto.exited.done():
            return None
        return proto.transport.get_pid()

    @property
    def last_exit_code(self) -> int | None:
        return self._last_exit

    @property
    def starts(self) -> int:
        """How many times a child was spawned (first start and every restart)."""
        return self._starts

    async def status(self) -> ServiceStatus:
        pid = self.pid
        if pid is not None:
            return ServiceStatus(ServiceState.RUNNING, pid=pid, restarts=self._restarts)
        if not self._ever_started:
            detail = "not started"
        elif self._last_exit is None:
            detail = "exited (code unknown)"
        else:
            detail = f"exited with code {self._last_exit}"
        return ServiceStatus(ServiceState.STOPPED, detail=detail, restarts=self._restarts)

    async def start(self) -> None:
        async with self._lock:
            await self._start_locked()

    async def stop(self) -> None:
        async with self._lock:
            await self._stop_locked()

    async def restart(self) -> None:
        async with self._lock:
            await self._stop_locked()
            await self._start_locked()
            self._restarts += 1

    async def log_tail(self, lines: int = 200) -> list[str]:
        if self._sink is None:
            if self.log_file is None:
                return []
            return tail_rotated(self.log_file, self.log_backups, lines)
        return self._sink.tail(lines)

    async def aclose(self) -> None:
        async with self._lock:
            await self._stop_locked()
            if self._sink is not None:
                self._sink.close()
                self._sink = None

    # ----------------------------------------------------------------- internals

    def _make_sink(self) -> LogSink:
        if self.log_file is None:
            return MemoryLog()
        return RotatingLog(self.log_file, self.log_max_bytes, self.log_backups)

    def _child_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(self.env)
        env.setdefault("PYTHONUNBUFFERED", "1")
        return env

    async def _start_locked(self) -> None:
        if self.pid is not None:
            return  # already running: starting twice must not spawn a second copy
        self._close_transport()
        if not self._ever_started:
            await self._reap_orphans()
        self._write_record(intent=True)
        if self._sink is None:
            self._sink = self._make_sink()
        sink = self._sink
        loop = asyncio.get_running_loop()
        kwargs: dict[str, Any] = {}
        if IS_WINDOWS:
            kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP  # type: ignore[attr-defined]
        else:
            kwargs["start_new_session"] = True
        hook = _ExitHook(self)

        def factory() -> _ChildProtocol:
            # Adopt the protocol before subprocess_exec returns: a child that dies within a
            # millisecond can have process_exited delivered before that await resumes, and
            # _on_exit ignores protocols that are not current.
            proto = _ChildProtocol(sink, hook)
            self._proto = proto
            return proto

        try:
            await loop.subprocess_exec(
                factory,
                *self.argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                cwd=str(self.cwd) if self.cwd is not None else None,
                env=self._child_env(),
                **kwargs,
            )
        except FileNotFoundError as exc:
            raise ServiceError(
                ServiceErrorKind.NOT_FOUND, f"{self.name}: cannot start {self.argv[0]!r}: {exc}"
            ) from exc
        except OSError as exc:
            raise ServiceError(
                ServiceErrorKind.FAILED, f"{self.name}: cannot start {self.argv[0]!r}: {exc}"
            ) from exc
        self._ever_started = True
        self._starts += 1
        self._write_record()
        log.info(
            "started %s (pid %s)",
            self.name,
            self.pid,
            extra={"target": self.name, "event": "process_started", "pid": self.pid},
        )

    async def _stop_locked(self) -> None:
        proto = self._proto
        if proto is None or proto.transport is None:
            return
        if not proto.exited.done():
            proto.expected = True
            self._signal_group(proto, graceful=True)
            if not await self._wait_exit(proto, self.stop_timeout):
                log.warning(
                    "%s ignored the stop request for %.1f s; killing it",
                    self.name,
                    self.stop_timeout,
                    extra={"target": self.name, "event": "process_kill"},
                )
                self._signal_group(proto, graceful=False)
                if not await self._wait_exit(proto, KILL_WAIT):
                    raise ServiceError(
                        ServiceErrorKind.TIMEOUT, f"{self.name}: still running after SIGKILL"
                    )
        self._kill_leftovers(proto)
        self._close_transport()
        # The record is deliberately kept: it names a process that is now dead, which
        # _orphan() recognises (pid, start time, argv), and a Guardian killed halfway
        # through a restart still finds the child it had just stopped or started.

    # ----------------------------------------------------------------- orphans

    def _write_record(self, *, intent: bool = False) -> None:
        """Note the child about to start (``intent``) or just started, atomically.

        The intent closes the gap between spawning and learning the pid: a Guardian killed
        in between still leaves a record of when a child with this argv was started.
        """
        if self.record is None:
            return
        data: dict[str, Any] = {"argv": self.argv, "intent_time": time.time()}
        pid = None if intent else self.pid
        try:
            if pid is not None:
                old = json.loads(self.record.read_text()) if self.record.exists() else {}
                data["intent_time"] = old.get("intent_time", data["intent_time"])
                data.update(pid=pid, create_time=psutil.Process(pid).create_time())
            self.record.parent.mkdir(parents=True, exist_ok=True)
            write_private_text(self.record, json.dumps(data))  # argv may hold a token
        except (OSError, ValueError, psutil.Error) as exc:
            log.warning(
                "%s: cannot record the child process: %s",
                self.name,
                exc,
                extra={"target": self.name, "event": "record_failed"},
            )

    def _orphans(self) -> list[psutil.Process]:
        """Children a previous Guardian left running: the recorded pid (same start time and
        argv), or, if it died before learning the pid, any process with this exact argv
        started since its last start intent whose parent is not us."""
        if self.record is None:
            return []
        try:
            data = json.loads(self.record.read_text())
            since = float(data["intent_time"]) - 1.0
        except (OSError, ValueError, KeyError, TypeError):
            return []
        found: list[psutil.Process] = []
        for proc in psutil.process_iter(["pid", "ppid", "cmdline", "create_time", "status"]):
            info = proc.info
            if info["cmdline"] != self.argv or info["status"] == psutil.STATUS_ZOMBIE:
                continue
            if info["ppid"] == os.getpid() or proc.pid == os.getpid():
                continue
            recorded = (
                proc.pid == data.get("pid")
                and abs(info["create_time"] - float(data.get("create_time", 0))) <= 1.0
            )
            if recorded or info["create_time"] >= since:
                found.append(proc)
        return found

    async def _reap_orphans(self) -> None:
        """Stop children left by a SIGKILLed Guardian before starting ours (they hold the
        port): SIGTERM to their process group, then SIGKILL."""
        for proc in self._orphans():
            log.warning(
                "%s: stopping pid %s left running by a previous Guardian",
                self.name,
                proc.pid,
                extra={"target": self.name, "event": "orphan_stopped", "pid": proc.pid},
            )
            for graceful, wait in ((True, self.stop_timeout), (False, KILL_WAIT)):
                with contextlib.suppress(ProcessLookupError, PermissionError, psutil.Error):
                    if IS_WINDOWS:
                        proc.terminate() if graceful else proc.kill()
                    else:
                        os.killpg(proc.pid, signal.SIGTERM if graceful else signal.SIGKILL)
                deadline = self.clock.monotonic() + wait
                gone = False
                while self.clock.monotonic() < deadline:
                    try:
                        gone = not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
                    except psutil.Error:
                        gone = True
                    if gone:
                        break
                    await self.clock.sleep(0.02)
                if gone:
                    break

    async def _wait_exit(self, proto: _ChildProtocol, timeout: float) -> bool:
        timer = asyncio.ensure_future(self.clock.sleep(timeout))
        waiters: set[asyncio.Future[Any]] = {proto.exited, timer}
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            timer.cancel()
        return proto.exited.done()

    def _signal_group(self, proto: _ChildProtocol, *, graceful: bool) -> None:
        transport = proto.transport
        if transport is None:
            return
        pid = transport.get_pid()
        try:
            if IS_WINDOWS:
                if graceful:
                    transport.send_signal(signal.CTRL_BREAK_EVENT)  # type: ignore[attr-defined]
                else:
                    transport.kill()
            else:
                os.killpg(pid, signal.SIGTERM if graceful else signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass  # already gone (or a zombie group we may no longer signal)

    def _kill_leftovers(self, proto: _ChildProtocol) -> None:
        """SIGKILL what is left of the child's group once the leader has exited.

        A grandchild that outlives the service would keep its port and its GPU memory and
        break the restart. The kernel never reuses a PID while a group with that ID exists,
        so this cannot hit an unrelated process.
        """
        if IS_WINDOWS or proto.transport is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proto.transport.get_pid(), signal.SIGKILL)

    def _close_transport(self) -> None:
        proto = self._proto
        if proto is not None and proto.transport is not None:
            proto.transport.close()

    def _on_exit(self, proto: _ChildProtocol, code: int | None) -> None:
        if proto is not self._proto:
            return
        self._last_exit = code
        if proto.expected:
            return
        log.warning(
            "%s exited with code %s",
            self.name,
            code,
            extra={"target": self.name, "event": "process_exited", "exit_code": code},
        )
        self._kill_leftovers(proto)
        for listener in list(self._listeners):
            try:
                listener(code)
            except Exception:
                log.exception("exit listener failed", extra={"target": self.name})
