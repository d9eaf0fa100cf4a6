"""A service that lives in memory: the :class:`ServiceBackend` protocol with nothing behind it.

Recovery, the lifecycle, incidents and the API only ever see a backend through the
protocol (plus :class:`ExitNotifying` and :class:`KnowsPid`), so their rules can be
exercised on a fake clock without a process, a service manager or an operating system:
this backend keeps its state in fields, says what was done to it in :attr:`actions`, and
lets a test make it crash (:meth:`MemoryBackend.die`), fail (:attr:`MemoryBackend.error`)
or take time to restart (``clock`` + ``restart_seconds``). It behaves as the supervised
process backend does where that matters to callers: a start while running is a no-op,
every spawn gets a new pid, an exit is heard by the exit listeners at once, and a stop
that Guardian asked for is not an exit.

Tests and benchmarks use it instead of defining their own; no config selects it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from guardian.core.clock import Clock
from guardian.services.base import ExitListener, ServiceError, ServiceState, ServiceStatus


class MemoryBackend:
    """One service in memory. ``actions`` may be shared between backends to see the order
    in which a lifecycle starts and stops several ("start db", "stop api", "restart ui")."""

    def __init__(
        self,
        name: str,
        *,
        running: bool = False,
        pid: int = 100,
        log: Iterable[str] = (),
        actions: list[str] | None = None,
        clock: Clock | None = None,
        restart_seconds: float = 0.0,
    ) -> None:
        if restart_seconds > 0 and clock is None:
            raise ValueError("restart_seconds needs the clock to wait on")
        self.name = name
        self.log_lines: list[str] = list(log)  # what log_tail returns, oldest first
        self.actions: list[str] = actions if actions is not None else []
        self.error: ServiceError | None = None  # when set, every call raises it
        self.restarts = 0  # restarts done (what a service manager's counter says)
        self.starts = 0  # spawns: the first start and every restart
        self.in_flight = 0  # start/stop/restart calls running now
        self.most_in_flight = 0  # the most that ever ran at once
        self.last_exit: int | None = None
        self._clock = clock
        self._restart_seconds = restart_seconds
        self._next_pid = pid
        self._pid: int | None = None
        self._listeners: list[ExitListener] = []
        if running:
            self._spawn()

    # ------------------------------------------------------------------ the protocol

    @property
    def pid(self) -> int | None:
        """The running process's pid; None while stopped (:class:`KnowsPid`)."""
        return self._pid

    @property
    def running(self) -> bool:
        return self._pid is not None

    def add_exit_listener(self, listener: ExitListener) -> None:
        self._listeners.append(listener)

    async def status(self) -> ServiceStatus:
        self._raise()
        if self._pid is not None:
            return ServiceStatus(ServiceState.RUNNING, pid=self._pid, restarts=self.restarts)
        if not self.starts:
            detail = "not started"
        elif self.last_exit is None:
            detail = "stopped"
        else:
            detail = f"exited with code {self.last_exit}"
        return ServiceStatus(ServiceState.STOPPED, detail=detail, restarts=self.restarts)

    async def start(self) -> None:
        with self._call("start"):
            if self._pid is None:
                self._spawn()

    async def stop(self) -> None:
        with self._call("stop"):
            self._pid = None
            self.last_exit = None

    async def restart(self) -> None:
        with self._call("restart"):
            if self._clock is not None and self._restart_seconds > 0:
                await self._clock.sleep(self._restart_seconds)
            self.restarts += 1
            self._spawn()

    async def log_tail(self, lines: int = 200) -> list[str]:
        return self.log_lines[-lines:] if lines > 0 else []

    async def aclose(self) -> None:
        """Guardian going away leaves nothing behind: the service stops with it."""
        self._pid = None

    # ------------------------------------------------------------------ what a test does to it

    def die(self, code: int | None = 1) -> None:
        """The process exits on its own: stopped, and every exit listener hears ``code``."""
        self._pid = None
        self.last_exit = code
        for listener in list(self._listeners):
            listener(code)

    # ------------------------------------------------------------------ inside

    def _spawn(self) -> None:
        self._pid = self._next_pid
        self._next_pid += 1
        self.starts += 1

    def _raise(self) -> None:
        if self.error is not None:
            raise self.error

    @contextmanager
    def _call(self, what: str) -> Iterator[None]:
        """One start/stop/restart: raises the set error, is noted in ``actions``, and
        counts as running for its duration (``most_in_flight`` shows overlaps)."""
        self._raise()
        self.actions.append(f"{what} {self.name}")
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            yield
        finally:
            self.in_flight -= 1
