"""The store's writer thread: the daemon's SQLite writes never wait on the caller's thread.

Real SQLite files and a real second process holding the write lock. The Database here is
opened with a 30 s busy timeout: a write made on the caller's thread would not return
while the lock is held, so every ``save``/``add_result`` that returns below proves the
wait happened elsewhere (no timing asserted).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from guardian.incidents.store import INCIDENTS, Store
from guardian.recovery.breakers import BREAKERS, BreakerRecord, SqliteBreakerStore
from guardian.store.db import Database
from guardian.store.writer import StoreWriter
from guardian.uptime.store import UPTIME, UptimeStore
from testkit.api import T0, result

HOLDER = """
import sqlite3, sys
c = sqlite3.connect(sys.argv[1], isolation_level=None)
c.execute("BEGIN IMMEDIATE")
print("held", flush=True)
sys.stdin.readline()  # hold until told
c.execute("COMMIT")
"""


class Problems:
    def __init__(self) -> None:
        self.now: dict[str, str] = {}

    def set_problem(self, key: str, message: str) -> None:
        self.now[key] = message

    def clear_problem(self, key: str) -> None:
        self.now.pop(key, None)


class Holder:
    """A second process holding the file's write lock until :meth:`release`."""

    def __init__(self, path: Path) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(path)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None and self.proc.stdout.readline() == "held\n"

    def release(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        assert self.proc.wait(30) == 0


@pytest.fixture
def holder_cleanup() -> Iterator[list[Holder]]:
    held: list[Holder] = []
    yield held
    for h in held:
        if h.proc.poll() is None:
            h.proc.kill()
            h.proc.wait()


def daemon_db(path: Path, problems: Problems | None = None, timeout: float = 30.0,
              max_jobs: int = 10_000) -> Database:
    return Database(path, problems=problems, recover=True, timeout=timeout, writer=True,
                    components=(INCIDENTS, BREAKERS, UPTIME), max_jobs=max_jobs)


def stored_breaker(path: Path) -> int | None:
    db = Database(path)
    try:
        rows = db.read(lambda c: c.execute(
            "SELECT attempts FROM breakers WHERE target = 'comfyui'").fetchall())
    finally:
        db.close()
    return None if not rows else int(rows[0][0])


# --------------------------------------------------------------------------- the thread


def test_jobs_run_in_order_on_one_thread_and_a_key_is_queued_once() -> None:
    writer = StoreWriter(max_jobs=100)
    gate, ran, threads = threading.Event(), list[str](), set[str]()

    def job(name: str) -> None:
        if name == "first":
            gate.wait(30)
        ran.append(name)
        threads.add(threading.current_thread().name)

    assert writer.submit(lambda: job("first"))
    assert writer.submit(lambda: job("flush-1"), key="flush")
    assert writer.submit(lambda: job("flush-2"), key="flush")  # joins the queued one
    assert writer.submit(lambda: job("last"))
    gate.set()
    assert writer.drain(30)
    assert ran == ["first", "flush-1", "last"]
    assert threads == {"guardian-store-writer"}
    assert writer.close(30)
    assert not writer.submit(lambda: job("late"))  # closed: refused, not run
    assert ran == ["first", "flush-1", "last"]


def test_a_full_queue_refuses_at_once_and_counts() -> None:
    writer = StoreWriter(max_jobs=2)
    gate, started = threading.Event(), threading.Event()
    def park() -> None:
        started.set()
        gate.wait(30)

    assert writer.submit(park)
    assert started.wait(30)  # running: the queue is empty again
    assert writer.drain(0.0) is False
    done: list[int] = []
    assert writer.submit(lambda: done.append(1)) and writer.submit(lambda: done.append(2))
    assert writer.submit(lambda: done.append(3)) is False
    assert writer.refused == 1
    gate.set()
    assert writer.close(30)
    assert done == [1, 2]


def test_a_job_that_raises_is_logged_and_the_next_runs(caplog: pytest.LogCaptureFixture) -> None:
    writer = StoreWriter()
    done: list[str] = []

    def boom() -> None:
        raise RuntimeError("bad row")

    writer.submit(boom)
    writer.submit(lambda: done.append("next"))
    assert writer.close(30)
    assert done == ["next"] and writer.failed == 1
    assert any("a store write failed" in r.message for r in caplog.records)


# --------------------------------------------------------------------------- the components


def test_a_held_lock_never_holds_the_caller_and_the_breaker_is_written_after(
    tmp_path: Path, holder_cleanup: list[Holder]
) -> None:
    path = tmp_path / "g.db"
    problems = Problems()
    db = daemon_db(path, problems)
    breakers = SqliteBreakerStore(db)
    held = Holder(path)
    holder_cleanup.append(held)
    breakers.save("comfyui", BreakerRecord(attempts=1, breaker_open=True))
    breakers.save("comfyui", BreakerRecord(attempts=2, breaker_open=True))
    # Returned while the lock is held (a 30 s busy wait on this thread would not have).
    assert breakers.unsaved == {"comfyui"}
    assert db.writer_thread is not None and db.writer_thread.is_alive()
    held.release()
    assert db.drain(60)
    assert breakers.unsaved == set()
    db.close()
    assert stored_breaker(path) == 2  # the latest record, once the lock was free


def test_a_write_refused_by_the_lock_is_kept_and_reported_as_guardians_trouble(
    tmp_path: Path, holder_cleanup: list[Holder]
) -> None:
    path = tmp_path / "g.db"
    problems = Problems()
    db = daemon_db(path, problems, timeout=0.05)
    breakers = SqliteBreakerStore(db)
    held = Holder(path)
    holder_cleanup.append(held)
    breakers.save("comfyui", BreakerRecord(attempts=3))
    assert db.drain(30)
    assert breakers.unsaved == {"comfyui"}  # kept in memory, not lost
    assert "database locked" in problems.now["store"]
    held.release()
    breakers.save("comfyui", BreakerRecord(attempts=4))
    assert db.drain(30)
    assert breakers.unsaved == set() and "store" not in problems.now
    db.close()
    assert stored_breaker(path) == 4


async def test_incidents_stay_readable_from_the_loop_while_the_file_is_locked(
    tmp_path: Path, holder_cleanup: list[Holder]
) -> None:
    path = tmp_path / "g.db"
    db = daemon_db(path)
    store = Store(db, prune_every=0)
    held = Holder(path)
    holder_cleanup.append(held)
    first = store.open_incident("comfyui", T0, "critical", "down")
    second = store.open_incident("panel", T0, "warning", "slow")
    store.add_result(result("comfyui", "http"), first.id)
    store.update_incident(first.id, status="resolved", resolved_at=T0)
    assert (first.id, second.id) == (1, 2)  # ids from memory: the file is not asked
    assert store.incident(first.id) is not None
    assert store.incident(first.id).status == "resolved"  # type: ignore[union-attr]
    assert {i.id for i in store.incidents()} == {1, 2}  # memory over the file
    assert store.unsaved == {1, 2}
    held.release()
    assert await store.settled(60)
    assert store.unsaved == set()
    assert [r.reason for r in store.results(incident_id=first.id)] == [""]
    assert {i.id: i.status for i in store.incidents()} == {1: "resolved", 2: "open"}
    db.close()
    again = Store(path)
    assert {i.id: i.status for i in again.incidents()} == {1: "resolved", 2: "open"}
    again.close()


def test_writes_keep_their_order_across_components(tmp_path: Path) -> None:
    """An incident's row before its results, an adoption after the events it adopts."""
    path = tmp_path / "g.db"
    db = daemon_db(path)
    store = Store(db, prune_every=0)
    from guardian.core.events import RecoveryEvent, RecoveryKind

    exit_seen = RecoveryEvent(target="comfyui", kind=RecoveryKind.EXITED, time=T0,
                              attempt=0, reason="exit 1")
    store.add_recovery(exit_seen)
    inc = store.open_incident("comfyui", T0, "critical", "down")
    for _ in range(50):
        store.add_result(result("comfyui", "http"), inc.id)
    store.adopt_recovery("comfyui", inc.id, T0)
    assert db.drain(30)
    assert len(store.results(incident_id=inc.id)) == 50
    assert [e.kind for e in store.recovery_events(incident_id=inc.id)] == ["exited"]
    db.close()


def test_rows_past_the_bound_are_dropped_counted_and_the_rest_go_in_one_batch(
    tmp_path: Path, holder_cleanup: list[Holder], monkeypatch: pytest.MonkeyPatch
) -> None:
    import guardian.incidents.pending as incidents_store

    monkeypatch.setattr(incidents_store, "MAX_QUEUED_EVENTS", 5)
    path = tmp_path / "g.db"
    problems = Problems()
    db = daemon_db(path, problems)
    store = Store(db, prune_every=0)
    held = Holder(path)
    holder_cleanup.append(held)
    inc = store.open_incident("comfyui", T0, "critical", "down")  # its flush waits
    for _ in range(12):
        store.add_result(result("comfyui", "http"), inc.id)
    assert store.dropped == 7  # five wait in order, the rest are counted
    assert "incident rows wait for the file" in problems.now["store"]
    assert store.incident(inc.id) is not None  # the incident itself is never dropped
    held.release()
    assert db.drain(60)
    db.close()
    again = Store(path)
    assert again.incident(inc.id) is not None
    assert len(again.results(incident_id=inc.id)) == 5
    again.close()


def test_uptime_flushes_run_on_the_writer_thread(
    tmp_path: Path, holder_cleanup: list[Holder]
) -> None:
    path = tmp_path / "g.db"
    db = daemon_db(path)
    clock = [0.0]
    uptime = UptimeStore(db, flush_every=1.0, monotonic=lambda: clock[0], now=lambda: T0)
    held = Holder(path)
    holder_cleanup.append(held)
    uptime.record("comfyui", T0, True)
    clock[0] = 5.0
    uptime.record("comfyui", T0, False)  # a flush is due: queued, not waited for
    assert db.writer_thread is not None and db.drain(0.0) is False  # it waits there
    held.release()
    assert db.drain(60)
    rows = db.snapshot(lambda c: c.execute("SELECT ok, total FROM uptime").fetchall())
    assert [tuple(r) for r in rows] == [(1, 2)]
    assert uptime.windows(T0)["comfyui"]["24h"].total == 2
    uptime.close()
    db.close()


async def test_settled_waits_off_the_loop_and_close_writes_what_is_queued(
    tmp_path: Path, holder_cleanup: list[Holder]
) -> None:
    path = tmp_path / "g.db"
    db = daemon_db(path)
    breakers = SqliteBreakerStore(db)
    held = Holder(path)
    holder_cleanup.append(held)
    breakers.save("comfyui", BreakerRecord(attempts=7))
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    ticker = asyncio.ensure_future(tick())
    waiting = asyncio.ensure_future(db.settled(60))
    for _ in range(50):  # the loop turns while settled() waits for the locked write
        await asyncio.sleep(0)
    assert ticks >= 49 and not waiting.done()
    await asyncio.to_thread(held.release)
    assert await waiting
    ticker.cancel()
    breakers.save("comfyui", BreakerRecord(attempts=8))
    await asyncio.to_thread(db.close)  # drains the queued save first
    assert stored_breaker(path) == 8
    with pytest.raises(Exception, match="closed"):
        db.read(lambda c: None)
    assert not db.submit(lambda: None)


def test_without_a_writer_thread_writes_happen_at_once(tmp_path: Path) -> None:
    """The CLI and tools: no thread, every write done before the call returns."""
    db = Database(tmp_path / "g.db")
    assert db.writer_thread is None
    breakers = SqliteBreakerStore(db)
    breakers.save("comfyui", BreakerRecord(attempts=5))
    assert breakers.unsaved == set()
    db.close()
    assert stored_breaker(tmp_path / "g.db") == 5
