"""Bounded, deadline-guarded daemon threads for blocking calls (guardian.support.blocking).

The hung calls here are real: a thread parked on an Event nobody sets until the test
ends, exactly what a statfs on a dead mount looks like from Python.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest

from guardian.support.blocking import BlockingPool, CallTimedOut, NoWorker, StillBlocked, pool


@pytest.fixture
def gate() -> Iterator[threading.Event]:
    """An Event hung calls wait on; set at the end so no thread outlives the test."""
    event = threading.Event()
    yield event
    event.set()


def workers(kind: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == f"guardian-{kind}"]


async def started(p: BlockingPool) -> None:
    """Until the pool's first call is running in its thread."""
    for _ in range(10_000):
        if p.busy:
            return
        await asyncio.sleep(0.001)
    raise AssertionError("the call never started")


async def test_value_and_exception_come_back() -> None:
    p = BlockingPool("t-value", 2)
    assert await p.run(lambda: 41 + 1, 5) == 42

    def boom() -> int:
        raise OSError(5, "Input/output error")

    with pytest.raises(OSError, match="Input/output error"):
        await p.run(boom, 5)
    assert p.busy == 0


async def test_hung_call_times_out_and_is_not_started_again(gate: threading.Event) -> None:
    p = BlockingPool("t-hung", 4)
    with pytest.raises(CallTimedOut, match=r"statfs did not return within 0\.05 s"):
        await p.run(gate.wait, 0.05, key="statfs:/mnt/dead", what="statfs")
    assert p.busy == 1
    threads = workers("t-hung")
    assert len(threads) == 1 and threads[0].daemon  # never keeps the process alive
    for _ in range(3):  # every later check interval: no new thread, a clear reason
        with pytest.raises(StillBlocked, match=r"statfs still blocked since \d+ s"):
            await p.run(gate.wait, 0.05, key="statfs:/mnt/dead", what="statfs")
    assert p.busy == 1 and len(workers("t-hung")) == 1
    assert p.blocked_since("statfs:/mnt/dead") is not None
    # another key is not held up by the stuck one
    assert await p.run(lambda: "ok", 5, key="statfs:/") == "ok"
    gate.set()
    threads[0].join(5)
    assert p.blocked_since("statfs:/mnt/dead") is None
    assert await p.run(lambda: "back", 5, key="statfs:/mnt/dead") == "back"


async def test_concurrency_is_bounded_per_kind(gate: threading.Event) -> None:
    disk = BlockingPool("t-disk", 2)
    memory = BlockingPool("t-memory", 2)
    for path in ("/a", "/b"):
        with pytest.raises(CallTimedOut):
            await disk.run(gate.wait, 0.02, key=path)
    with pytest.raises(NoWorker, match="no free t-disk worker: 2 call"):
        await disk.run(lambda: None, 0.05, key="/c")
    assert len(workers("t-disk")) == 2  # the third call started no thread
    # another kind is untouched by the full disk pool
    assert await memory.run(lambda: "fine", 5) == "fine"


async def test_a_waiting_call_gets_the_worker_that_frees_up() -> None:
    release = threading.Event()
    p = BlockingPool("t-wait", 1)
    first = asyncio.ensure_future(p.run(release.wait, 30))
    await started(p)
    second = asyncio.ensure_future(p.run(lambda: "second", 30))
    await asyncio.sleep(0.01)
    assert not second.done()  # queued for the single worker, not failed
    release.set()
    assert await first is True
    assert await second == "second"


async def test_cancelled_caller_abandons_the_call(gate: threading.Event) -> None:
    p = BlockingPool("t-cancel", 2)
    task = asyncio.ensure_future(p.run(gate.wait, 30, key="k"))
    await started(p)
    task.cancel()  # what the engine's timeout does
    with pytest.raises(asyncio.CancelledError):
        await task
    with pytest.raises(StillBlocked):  # joins the running call, which never answers
        await p.run(gate.wait, 0.05, key="k")


async def test_concurrent_callers_of_one_key_share_one_call() -> None:
    """Two targets checking "/" at the same moment: one statfs, both get its answer."""
    release = threading.Event()
    calls: list[int] = []

    def slow_statfs() -> str:
        calls.append(1)
        release.wait(30)
        return "usage of /"

    p = BlockingPool("t-join", 4)
    first = asyncio.ensure_future(p.run(slow_statfs, 30, key="statfs:/"))
    await started(p)
    second = asyncio.ensure_future(p.run(slow_statfs, 30, key="statfs:/"))
    await asyncio.sleep(0.01)
    assert p.busy == 1 and not second.done()  # joined, not failed, no second thread
    release.set()
    assert await first == await second == "usage of /"
    assert calls == [1]


def test_sync_call_and_submit(gate: threading.Event) -> None:
    p = BlockingPool("t-sync", 2)
    assert p.call(lambda: 7, 5) == 7
    with pytest.raises(CallTimedOut, match=r"hang did not return within 0\.05 s"):
        p.call(gate.wait, 0.05, key="h", what="hang")
    with pytest.raises(StillBlocked):
        p.submit(gate.wait, 0.05, key="h", what="hang")
    pending = p.submit(lambda: "later", 5)
    assert pending.wait(5) == "later"
    with pytest.raises(CallTimedOut):
        p.call(gate.wait, 0.02)
    with pytest.raises(NoWorker):  # both workers stuck: waits out its deadline, no thread
        p.call(lambda: None, 0.02)


def test_process_wide_pools_are_per_kind() -> None:
    assert pool("disk") is pool("disk")
    assert pool("disk") is not pool("memory")
    assert pool("disk").max_workers >= 2
    with pytest.raises(ValueError):
        BlockingPool("x", 0)


async def test_stuck_calls_never_use_up_the_pool(gate: threading.Event) -> None:
    """Ten hung paths (one stuck call each) and "/" still gets a worker; threads bounded."""
    p = BlockingPool("t-stuck", 2, max_stuck=10)
    for i in range(10):
        with pytest.raises(CallTimedOut):
            await p.run(gate.wait, 0.02, key=f"statfs:/mnt/dead{i}")
    assert p.busy == 10
    assert await p.run(lambda: "free", 5, key="statfs:/") == "free"
    for i in range(2):  # the stuck budget is full: in-time calls still have their workers
        with pytest.raises(CallTimedOut):
            await p.run(gate.wait, 0.02, key=f"statfs:/mnt/more{i}")
    with pytest.raises(NoWorker):  # 2 workers + 10 stuck: no thread beyond that, ever
        await p.run(lambda: None, 0.05, key="statfs:/x")
    assert len(workers("t-stuck")) == 12
