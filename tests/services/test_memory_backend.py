"""The in-memory backend keeps the promises callers rely on of every backend."""

from __future__ import annotations

import asyncio

import pytest

from guardian.core.clock import FakeClock
from guardian.services.base import (
    ExitNotifying,
    KnowsPid,
    ServiceBackend,
    ServiceError,
    ServiceErrorKind,
    ServiceState,
)
from guardian.services.memory import MemoryBackend


def test_it_is_a_backend_that_hears_exits_and_knows_its_pid() -> None:
    backend: ServiceBackend = MemoryBackend("api")  # mypy checks the protocol here
    assert isinstance(backend, ExitNotifying) and isinstance(backend, KnowsPid)


async def test_start_stop_restart_as_a_supervised_process_does() -> None:
    b = MemoryBackend("api", pid=500)
    first = await b.status()
    assert (first.state, first.pid, first.detail) == (ServiceState.STOPPED, None, "not started")
    await b.start()
    await b.start()  # a second start while running spawns no second copy
    assert (await b.status()).pid == 500 and b.starts == 1
    await b.restart()
    st = await b.status()
    assert (st.state, st.pid, st.restarts) == (ServiceState.RUNNING, 501, 1)
    await b.stop()
    assert (await b.status()).state is ServiceState.STOPPED and b.pid is None
    assert b.actions == ["start api", "start api", "restart api", "stop api"]


async def test_a_crash_is_heard_at_once_and_a_stop_is_no_crash() -> None:
    b = MemoryBackend("api", running=True)
    heard: list[int | None] = []
    b.add_exit_listener(heard.append)
    await b.stop()
    await b.start()
    b.die(3)
    assert heard == [3]
    st = await b.status()
    assert (st.state, st.pid, st.detail) == (ServiceState.STOPPED, None, "exited with code 3")
    await b.start()
    assert b.pid == 102  # every spawn is a new process


async def test_an_error_set_is_what_every_call_raises() -> None:
    b = MemoryBackend("api", running=True)
    b.error = ServiceError(ServiceErrorKind.ACCESS_DENIED, "no rights")
    for call in (b.status, b.start, b.stop, b.restart):
        with pytest.raises(ServiceError) as caught:
            await call()
        assert caught.value.kind is ServiceErrorKind.ACCESS_DENIED
    assert b.actions == [] and b.running


async def test_log_tail_is_the_last_lines_oldest_first() -> None:
    b = MemoryBackend("api", log=["a", "b", "c"])
    assert await b.log_tail(2) == ["b", "c"]
    assert await b.log_tail(0) == []
    assert await b.log_tail() == ["a", "b", "c"]


async def test_a_slow_restart_waits_on_the_clock_and_overlaps_are_counted() -> None:
    clock = FakeClock()
    b = MemoryBackend("api", running=True, clock=clock, restart_seconds=5)
    both = [asyncio.create_task(b.restart()) for _ in range(2)]
    await clock.settle()
    assert b.in_flight == 2 and b.restarts == 0
    await clock.advance(5)
    await asyncio.gather(*both)
    assert b.restarts == 2 and b.in_flight == 0 and b.most_in_flight == 2
    with pytest.raises(ValueError, match="clock"):
        MemoryBackend("api", restart_seconds=1)
