"""A process Guardian starts and supervises itself (the backend ``process``).

A supervised ComfyUI must not live only as long as Guardian: an upgrade, a config change
or an OOM-kill of Guardian would take the user's running job with it. So:

* the child runs in its own session/process group and writes its output straight into
  its log file (``O_APPEND``, see :mod:`guardian.services.process.logfile`), not into a pipe;
* its pid, start time and process group go into a record in the state dir
  (:mod:`guardian.services.process.record`); the next Guardian finds it alive by that identity
  and *adopts* it instead of killing it;
* child or adopted, its exit is seen the instant it happens through a pidfd / process
  handle (:mod:`guardian.services.process.exitwatch`), so recovery reacts in milliseconds;
* a stop reaches the whole tree (:mod:`guardian.services.process.treekill`), and every signal is
  sent only after pid *and* start time matched (:mod:`guardian.services.process.identity`);
* whether stopping Guardian stops the process or leaves it for the next Guardian is the
  target's ``on_guardian_stop`` ("stop" by default, "leave" like systemd's KillMode=none).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from guardian.core.clock import Clock, SystemClock
from guardian.services.base import (
    ExitListener,
    ServiceError,
    ServiceErrorKind,
    ServiceState,
    ServiceStatus,
)
from guardian.services.process.exitwatch import ExitWatcher
from guardian.services.process.identity import ProcessIdentity, identify
from guardian.services.process.logfile import SupervisedLog
from guardian.services.process.record import (
    TOKEN_ENV,
    ProcessRecord,
    RecordFile,
    find_recorded,
    new_token,
)
from guardian.services.process.record import now as wall_now
from guardian.services.process.treekill import TreeStopper, default_tree
from guardian.support.blocking import pool

log = logging.getLogger("guardian.services.process.backend")

LOG_IO_DEADLINE = 30.0  # seconds for a log tail, a copy-truncate or a process-table scan

KILL_WAIT = 5.0  # seconds to wait for the exit after SIGKILL before giving up
ROTATE_INTERVAL = 1.0  # seconds between log size checks
ROTATE_IDLE_MAX = 10.0  # ... backing off to this while the log does not grow
MARKER = "--- guardian"  # first word of Guardian's own lines in a supervised log
IS_WINDOWS = sys.platform == "win32"

OnGuardianStop = Literal["stop", "leave"]
StartOutcome = Literal["started", "adopted"]


def marker_line(what: str, when: datetime | None = None) -> str:
    """``--- guardian 2026-01-01T00:00:00+00:00: started pid 42 (start 1) ---``."""
    stamp = (when or datetime.now(UTC)).isoformat(timespec="milliseconds")
    return f"{MARKER} {stamp}: {what} ---"


@dataclass(eq=False)
class _Run:
    """One running process: a child we spawned, or one we adopted."""

    ident: ProcessIdentity
    watcher: ExitWatcher
    popen: subprocess.Popen[bytes] | None  # None when adopted
    expected: bool = False  # set when Guardian itself stops it

    @property
    def adopted(self) -> bool:
        return self.popen is None


class ProcessBackend:
    """Starts ``argv`` (or adopts the one a previous Guardian left), notices its exit
    instantly, stops its whole tree."""

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
        on_guardian_stop: OnGuardianStop = "stop",
        rotate_interval: float = ROTATE_INTERVAL,
        tree: TreeStopper | None = None,
    ) -> None:
        if not argv:
            raise ValueError("a supervised process needs a non-empty argv")
        self.name = target_name
        self.argv = [str(a) for a in argv]
        self.cwd = cwd
        self.env = dict(env or {})
        self.stop_timeout = stop_timeout
        self.clock = clock or SystemClock()
        self.on_guardian_stop: OnGuardianStop = on_guardian_stop
        self.rotate_interval = rotate_interval
        self.tree = tree or default_tree()
        self._tmpdir: Path | None = None
        if log_file is None:
            # No configured file: a private one, so output still never goes through a pipe.
            self._tmpdir = Path(tempfile.mkdtemp(prefix=f"guardian-{target_name}-"))
            log_file = self._tmpdir / "output.log"
        self.log_file = log_file
        self.log = SupervisedLog(log_file, log_max_bytes, log_backups)
        self.records = None if record is None else RecordFile(record)
        self._run: _Run | None = None
        self._listeners: list[ExitListener] = []
        self._lock = asyncio.Lock()
        self._last_exit: int | None = None
        self._ever_started = False
        self._recovered = False
        self._restarts = 0
        self._starts = 0
        self._rotator: asyncio.Task[None] | None = None
        self._closing = False  # aclose() ran: the rotator ends
        self.start_outcome: StartOutcome | None = None  # what the first start() did

    # ----------------------------------------------------------------- protocol

    def add_exit_listener(self, listener: ExitListener) -> None:
        self._listeners.append(listener)

    @property
    def pid(self) -> int | None:
        run = self._run
        if run is None or run.watcher.exited.done():
            return None
        return run.ident.pid

    @property
    def identity(self) -> ProcessIdentity | None:
        return None if self.pid is None or self._run is None else self._run.ident

    @property
    def adopted(self) -> bool:
        return self.pid is not None and self._run is not None and self._run.adopted

    @property
    def last_exit_code(self) -> int | None:
        return self._last_exit

    @property
    def starts(self) -> int:
        """How many times a child was spawned (first start and every restart)."""
        return self._starts

    @property
    def _sink(self) -> SupervisedLog:
        return self.log

    async def status(self) -> ServiceStatus:
        pid = self.pid
        if pid is not None:
            adopted = self.adopted
            detail = "adopted (started by an earlier Guardian)" if adopted else ""
            return ServiceStatus(
                ServiceState.RUNNING,
                pid=pid,
                detail=detail,
                restarts=self._restarts,
                adopted=adopted,
            )
        if not self._ever_started:
            detail = "not started"
        elif self._last_exit is None:
            detail = "exited (code unknown)"
        else:
            detail = f"exited with code {self._last_exit}"
        return ServiceStatus(ServiceState.STOPPED, detail=detail, restarts=self._restarts)

    async def start(self) -> None:
        async with self._lock:
            if self.pid is not None:
                return  # already running: starting twice must not spawn a second copy
            if not self._recovered:
                self._recovered = True
                if await self._recover():
                    self.start_outcome = self.start_outcome or "adopted"
                    return
            await self._spawn()
            self.start_outcome = self.start_outcome or "started"

    async def stop(self) -> None:
        async with self._lock:
            await self._stop_locked()

    async def restart(self) -> None:
        async with self._lock:
            self._recovered = True  # a restart replaces whatever runs; never adopt now
            await self._stop_locked()
            await self._spawn()
            self._restarts += 1

    async def log_tail(self, lines: int = 200) -> list[str]:
        # Own bounded daemon threads (guardian.support.blocking), never asyncio's shared pool.
        return await pool("logs").run(
            lambda: self.log.tail(lines), LOG_IO_DEADLINE, key=f"tail:{self.name}"
        )

    async def aclose(self) -> None:
        """Guardian is stopping: stop the process, or leave it for the next Guardian."""
        async with self._lock:
            run = self._run
            left = self.on_guardian_stop == "leave" and run is not None and self.pid is not None
            if left and run is not None:
                run.expected = True
                run.watcher.close()
                self._run = None
                self.log.write_line(
                    marker_line(f"Guardian stopped; pid {run.ident.pid} left running")
                )
                log.info(
                    "%s: leaving pid %s running for the next Guardian (on_guardian_stop=leave)",
                    self.name,
                    run.ident.pid,
                    extra={"target": self.name, "event": "process_left", "pid": run.ident.pid},
                )
                if run.popen is not None:
                    run.popen.returncode = 0  # stop Popen from reaping a process it no longer owns
            else:
                await self._stop_locked()
            self._closing = True
            if self._rotator is not None:
                self._rotator.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await self._rotator
                self._rotator = None
            if self._tmpdir is not None and not left:
                shutil.rmtree(self._tmpdir, ignore_errors=True)

    # ----------------------------------------------------------------- adoption

    async def _recover(self) -> bool:
        """Find what a previous Guardian left running; adopt it. True when adopted."""
        if self.records is None:
            return False
        record = self.records.load()
        if record is None:
            return False
        found = await pool("logs").run(
            lambda: find_recorded(record), LOG_IO_DEADLINE, key=f"find:{self.name}"
        )
        if not found:
            return False
        roots = _roots(found)
        leader = min(roots, key=lambda p: p.create_time)
        for other in roots:
            if other is not leader:
                # Two trees carry the token: only one can hold the port; stop the younger.
                log.warning(
                    "%s: stopping pid %s, a second copy left by a previous Guardian",
                    self.name,
                    other.pid,
                    extra={"target": self.name, "event": "orphan_stopped", "pid": other.pid},
                )
                await self._stop_ident(other, own_child=False, watcher=None)
        self._adopt(leader, record)
        return True

    def _adopt(self, ident: ProcessIdentity, record: ProcessRecord) -> None:
        watcher = ExitWatcher(ident)
        run = _Run(ident, watcher, None)
        self._install(run)
        self._ever_started = True
        self._starts = max(self._starts, record.starts)
        if record.identity is None:
            record.identity = ident
            if self.records is not None:
                self.records.save(record)
        started = datetime.fromtimestamp(ident.create_time, UTC).isoformat(timespec="seconds")
        self.log.write_line(marker_line(f"adopted pid {ident.pid} (running since {started})"))
        log.info(
            "%s: adopted pid %s left running by a previous Guardian (running since %s; "
            "exit seen via %s)",
            self.name,
            ident.pid,
            started,
            watcher.how,
            extra={"target": self.name, "event": "process_adopted", "pid": ident.pid},
        )

    # ----------------------------------------------------------------- spawning

    def _child_env(self, token: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(self.env)
        env.setdefault("PYTHONUNBUFFERED", "1")
        env[TOKEN_ENV] = token
        return env

    async def _spawn(self) -> None:
        record = ProcessRecord(new_token(self.name), wall_now(), self.argv, None, self._starts + 1)
        if self.records is not None:
            self.records.save(record)  # the intent: a Guardian killed now still finds it
        kwargs: dict[str, Any] = {}
        if IS_WINDOWS:
            kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP  # type: ignore[attr-defined]
        else:
            kwargs["start_new_session"] = True
        try:
            fd = self.log.open_for_child()
        except OSError as exc:
            raise ServiceError(
                ServiceErrorKind.FAILED, f"{self.name}: cannot open its log {self.log_file}: {exc}"
            ) from exc
        try:
            # A plain Popen, not an asyncio transport: closing a transport kills the child,
            # and a child left for the next Guardian must outlive this one. Spawning is
            # fork+exec (milliseconds); the exit is awaited through the ExitWatcher.
            popen = subprocess.Popen(  # noqa: ASYNC220
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=fd,
                stderr=fd,
                cwd=str(self.cwd) if self.cwd is not None else None,
                env=self._child_env(record.token),
                close_fds=True,
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
        finally:
            os.close(fd)
        ident = identify(popen.pid) or ProcessIdentity(
            popen.pid, record.intent_time, None if IS_WINDOWS else popen.pid
        )
        self._ever_started = True
        self._starts += 1
        record.identity = ident
        if self.records is not None:
            self.records.save(record)
        self.log.write_line(marker_line(f"started pid {popen.pid} (start {self._starts})"))
        self._install(_Run(ident, ExitWatcher(ident, reap=popen.poll), popen))
        log.info(
            "started %s (pid %s)",
            self.name,
            popen.pid,
            extra={"target": self.name, "event": "process_started", "pid": popen.pid},
        )

    def _install(self, run: _Run) -> None:
        self._run = run
        run.watcher.exited.add_done_callback(lambda fut: self._on_exit(run, fut))
        if self._rotator is None or self._rotator.done():
            self._closing = False
            self._rotator = asyncio.get_running_loop().create_task(self._rotate_forever())

    # ----------------------------------------------------------------- stopping

    async def _stop_locked(self) -> None:
        run = self._run
        if run is None:
            return
        if not run.watcher.exited.done():
            run.expected = True
            await self._stop_ident(run.ident, own_child=not run.adopted, watcher=run.watcher)
        self.tree.kill_leftovers(run.ident)
        run.watcher.close()
        if run.popen is not None:
            with contextlib.suppress(OSError):
                run.popen.poll()
        # The record is kept: it names a process that is now dead, which the next
        # Guardian recognises as such (pid + start time no longer match a live process).

    async def _stop_ident(
        self, ident: ProcessIdentity, *, own_child: bool, watcher: ExitWatcher | None
    ) -> None:
        """SIGTERM (+SIGCONT) the tree, ``stop_timeout`` to comply, then kill the tree."""
        own_watcher = watcher is None
        if watcher is None:
            watcher = ExitWatcher(ident)
        try:
            await self.tree.terminate(ident, own_child=own_child)
            if await self._wait_exit(watcher, self.stop_timeout):
                return
            log.warning(
                "%s ignored the stop request for %.1f s; killing it",
                self.name,
                self.stop_timeout,
                extra={"target": self.name, "event": "process_kill", "pid": ident.pid},
            )
            await self.tree.kill(ident)
            if not await self._wait_exit(watcher, KILL_WAIT):
                raise ServiceError(
                    ServiceErrorKind.TIMEOUT,
                    f"{self.name}: pid {ident.pid} still running after kill",
                )
        finally:
            if own_watcher:
                watcher.close()

    async def _wait_exit(self, watcher: ExitWatcher, timeout: float) -> bool:
        if watcher.exited.done():
            return True
        timer = asyncio.ensure_future(self.clock.sleep(timeout))
        waiters: set[asyncio.Future[Any]] = {watcher.exited, timer}
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            timer.cancel()
        return watcher.exited.done()

    # ----------------------------------------------------------------- exits, rotation

    def _on_exit(self, run: _Run, fut: asyncio.Future[int | None]) -> None:
        if fut.cancelled() or run is not self._run:
            return
        code = fut.result()
        self._last_exit = code
        how = "exited" if code is None else f"exited with code {code}"
        self.log.write_line(marker_line(f"pid {run.ident.pid} {how}"))
        if run.expected:
            return
        log.warning(
            "%s %s",
            self.name,
            how if not run.adopted else f"(adopted pid {run.ident.pid}) {how}",
            extra={
                "target": self.name,
                "event": "process_exited",
                "exit_code": code,
                "pid": run.ident.pid,
            },
        )
        self.tree.kill_leftovers(run.ident)
        for listener in list(self._listeners):
            try:
                listener(code)
            except Exception:
                log.exception("exit listener failed", extra={"target": self.name})

    async def _rotate_forever(self) -> None:
        """Keep the log within its size limit by copy-truncate, while Guardian runs.

        The size is looked at every ``rotate_interval``, sooner while the file grows fast
        enough to pass its limit before then (see :func:`next_rotate_check`): a chatty
        child would otherwise overshoot by a whole interval of output. While it does not
        grow at all the wait doubles up to :data:`ROTATE_IDLE_MAX`: a quiet child then
        costs no thread and wakeups every second (most of an idle Guardian's CPU); one that
        starts writing after a quiet spell is seen within that longer wait.
        """
        delay = self.rotate_interval
        last_size: int | None = None
        last_at = self.clock.monotonic()
        with contextlib.suppress(Exception):
            last_size = await pool("logs").run(
                self.log.size, LOG_IO_DEADLINE, key=f"rotate:{self.name}"
            )
            last_at = self.clock.monotonic()
        # Checked after every await, not only cancellation: Python 3.11's wait_for (inside
        # pool().run) can swallow a cancel that arrives as its call completes.
        while not self._closing:
            await self.clock.sleep(delay)
            if self._closing:
                return
            try:
                seen, left = await pool("logs").run(
                    self.log.rotate_and_size, LOG_IO_DEADLINE, key=f"rotate:{self.name}"
                )
            except Exception:  # never let rotation trouble end supervision
                log.warning("%s: log rotation failed", self.name, exc_info=True)
                delay, last_size = self.rotate_interval, None
                continue
            now = self.clock.monotonic()
            grew = None if last_size is None else seen - last_size
            if grew == 0:  # quiet: back off, so an idle child costs no wakeup a second
                delay = min(ROTATE_IDLE_MAX, max(delay, self.rotate_interval) * 2)
            else:
                delay = next_rotate_check(
                    left, grew, now - last_at, self.log.max_bytes, self.rotate_interval
                )
            last_size, last_at = left, now


ROTATE_MIN_INTERVAL = 0.05  # seconds: the fastest size checks of a fast-growing log


def next_rotate_check(
    size: int, grew: int | None, elapsed: float, limit: int, interval: float
) -> float:
    """Seconds until the next size check of a log of ``size`` bytes that grew by ``grew``
    bytes over the last ``elapsed`` seconds: ``interval``, or half the time it needs at
    that rate to reach ``limit``, but at least :data:`ROTATE_MIN_INTERVAL`."""
    if grew is None or grew <= 0 or elapsed <= 0:
        return interval
    rate = grew / elapsed
    return min(interval, max(ROTATE_MIN_INTERVAL, max(0, limit - size) / rate / 2))


def _roots(found: list[ProcessIdentity]) -> list[ProcessIdentity]:
    """The processes of ``found`` whose parent is not in ``found`` (children inherit the
    token through their environment, so a token search returns whole trees)."""
    import psutil

    pids = {p.pid for p in found}
    roots = []
    for p in found:
        try:
            parent = psutil.Process(p.pid).ppid()
        except psutil.Error:
            continue
        if parent not in pids:
            roots.append(p)
    return roots or found[:1]
