"""Issue 11 item 3: a damaged, lost or full store is Guardian's trouble, never an exit.

Real SQLite files, real supervised processes (testkit/victim.py) killed with real signals;
``guardian run`` as a real subprocess where the damage is found at start, the runtime
in-process where the test must reach the open connection (damage mid-run, a full disk
forced with ``PRAGMA max_page_count``: no tiny tmpfs here).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import signal
import sqlite3
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from guardian.config.load import load_config
from guardian.incidents.store import Store
from guardian.recovery.breakers import BreakerRecord, SqliteBreakerStore
from guardian.store.db import Database
from testkit.chaos import (
    GuardianProc,
    cleanup,
    features,
    free_port,
    guardian_config,
    http_ok,
    log_events,
    read_pid,
    wait_for,
)

pytestmark = [
    pytest.mark.skipif(os.name == "nt", reason="POSIX signals"),
    pytest.mark.skipif(features() is not None, reason=str(features())),
    pytest.mark.timeout(120),
]

WHEN = datetime(2026, 12, 1, 22, 0, tzinfo=UTC)


def config_with_api(tmp: Path, port: int, pidfile: Path) -> tuple[Path, int]:
    path = guardian_config(tmp, port, pidfile)
    api_port = free_port()
    text = path.read_text().replace(
        "[api]\nenabled = false", f'[api]\nenabled = true\nhost = "127.0.0.1"\nport = {api_port}'
    )
    path.write_text(text)
    return path, api_port


def health(api_port: int) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{api_port}/api/health", timeout=2) as r:
            body = r.read()
    except urllib.error.HTTPError as e:  # 503 while a target is unhealthy: still the view
        body = e.read()
    except OSError:
        return None
    try:
        data: dict[str, Any] = json.loads(body)
    except ValueError:
        return None
    return data


def store_problem(api_port: int) -> str | None:
    data = health(api_port)
    if not data:
        return None
    problem = data.get("guardian", {}).get("problems", {}).get("store")
    return str(problem) if problem else None


def write_real_store(path: Path) -> None:
    """What Guardian leaves behind: an open breaker for the victim, incidents, history."""
    db = Database(path)
    SqliteBreakerStore(db).save("victim", BreakerRecord(attempts=3, breaker_open=True))
    store = Store(db)
    for n in range(3):
        inc = store.open_incident("victim", WHEN, "critical", f"gave up #{n}")
        for i in range(80):
            store.add_notification(inc.id, "victim", "mail", f"t{i}", WHEN, True, "x" * 100)
    db.close()


def zero_pages_2_to_4(path: Path) -> None:
    """``dd if=/dev/zero of=guardian.db bs=4096 seek=1 count=3 conv=notrunc``."""
    con = sqlite3.connect(path)
    page = int(con.execute("PRAGMA page_size").fetchone()[0])
    assert int(con.execute("PRAGMA page_count").fetchone()[0]) > 4
    con.close()
    with open(path, "r+b") as f:
        f.seek(page)
        f.write(b"\0" * page * 3)


def sigkill_victim(pidfile: Path) -> int:
    pid = read_pid(pidfile)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    return pid


def restarted(pidfile: Path, port: int, old: int) -> bool:
    pid = read_pid(pidfile)
    return pid is not None and pid != old and http_ok(port)


def test_zeroed_pages_at_start_guardian_supervises_with_a_fresh_store(tmp_path: Path) -> None:
    port, pidfile = free_port(), tmp_path / "victim.pid"
    config, api_port = config_with_api(tmp_path, port, pidfile)
    store = tmp_path / "state" / "guardian.db"
    store.parent.mkdir(parents=True)
    write_real_store(store)
    zero_pages_2_to_4(store)
    damaged = hashlib.sha256(store.read_bytes()).hexdigest()
    g: GuardianProc | None = None
    with cleanup(str(tmp_path), lambda: g):
        g = GuardianProc(config, tmp_path / "guardian.stderr")
        assert wait_for(lambda: http_ok(port), 20), g.stderr()  # supervising at once
        problem = wait_for(lambda: store_problem(api_port), 20)
        assert problem and "damaged" in problem, g.stderr()

        (kept,) = store.parent.glob("guardian.db.corrupt-*")
        assert hashlib.sha256(kept.read_bytes()).hexdigest() == damaged  # kept as it was
        assert str(kept) in problem
        logged = [
            e
            for e in log_events(tmp_path / "logs" / "guardian.log")
            if e.get("event") == "store_damaged"
        ]
        assert len(logged) == 1 and logged[0]["level"] == "error"
        assert logged[0]["moved_to"] == str(kept)

        old = sigkill_victim(pidfile)  # still supervising: a crash is repaired
        assert wait_for(lambda: restarted(pidfile, port, old), 20), g.stderr()
        assert g.proc.poll() is None
        assert g.stop() == 0
    assert "Traceback" not in g.stderr()
    fresh = Database(store)
    assert fresh.integrity_check() == "ok"
    assert SqliteBreakerStore(fresh).load()["victim"].attempts >= 1  # the fresh file is used
    fresh.close()


def test_a_store_emptied_behind_guardians_back_is_state_lost(tmp_path: Path) -> None:
    port, pidfile = free_port(), tmp_path / "victim.pid"
    config, api_port = config_with_api(tmp_path, port, pidfile)
    store = tmp_path / "state" / "guardian.db"
    store.parent.mkdir(parents=True)
    write_real_store(store)
    store.write_bytes(b"")  # e.g. a crashed copy tool, a truncating backup restore
    g: GuardianProc | None = None
    with cleanup(str(tmp_path), lambda: g):
        g = GuardianProc(config, tmp_path / "guardian.stderr")
        assert wait_for(lambda: http_ok(port), 20), g.stderr()
        problem = wait_for(lambda: store_problem(api_port), 20)
        assert problem and "state lost" in problem
        lost = [
            e
            for e in log_events(tmp_path / "logs" / "guardian.log")
            if e.get("event") == "store_lost"
        ]
        assert len(lost) == 1 and lost[0]["level"] == "warning"
        assert g.stop() == 0


# ------------------------------------------------------------------ in-process runtime


async def started_guardian(tmp_path: Path) -> tuple[Any, int, Path]:
    from guardian.runtime import Guardian

    port, pidfile = free_port(), tmp_path / "victim.pid"
    g = Guardian(load_config(guardian_config(tmp_path, port, pidfile), env={}))
    await g.start()
    assert await until(lambda: http_ok(port), 20)
    return g, port, pidfile


async def until(pred: Any, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await asyncio.to_thread(pred)
        if value:
            return value
        if time.monotonic() > deadline:
            return None
        await asyncio.sleep(0.05)


async def test_damage_found_mid_run_is_moved_aside_and_supervision_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    g, port, pidfile = await started_guardian(tmp_path)
    try:
        db = g.db
        assert db is not None and g.incidents_store is not None
        for i in range(200):  # history, so the file has pages to lose
            g.incidents_store.add_notification(
                None, "victim", "mail", f"t{i}", WHEN, True, "x" * 99
            )
        with db.lock:
            db.connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            zero_pages_2_to_4(db.path)
            with sqlite3.connect(db.path) as other:  # another writer drops the page cache
                other.execute("PRAGMA application_id = 7")
            other.close()
        with caplog.at_level(logging.WARNING):
            old = sigkill_victim(pidfile)
            assert await until(lambda: restarted(pidfile, port, old), 20)
            assert await until(lambda: bool(db.moved_to), 20)
        assert db.moved_to[0].exists()
        assert "damaged" in g.state.problems["store"]
        assert any(getattr(r, "event", None) == "store_damaged" for r in caplog.records)

        old = sigkill_victim(pidfile)  # supervision and the fresh store keep working
        assert await until(lambda: restarted(pidfile, port, old), 20)
        assert await until(lambda: _row_attempts(db.path) >= 1, 10)
    finally:
        await g.stop()


def _row_attempts(path: Path) -> int:
    con = sqlite3.connect(path)
    try:
        row = con.execute("SELECT attempts FROM breakers WHERE target = 'victim'").fetchone()
    except sqlite3.Error:
        return -1
    finally:
        con.close()
    return -1 if row is None else int(row[0])


async def test_a_full_disk_is_reported_not_a_crash_and_cleared_when_space_returns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = tmp_path / "state" / "guardian.db"
    store.parent.mkdir(parents=True)
    con = sqlite3.connect(store)  # 512-byte pages: a few rows need a new page
    con.execute("PRAGMA page_size = 512")
    con.execute("VACUUM")
    con.close()
    g, port, pidfile = await started_guardian(tmp_path)
    try:
        db = g.db
        assert db is not None and g.breakers is not None
        with db.lock:
            n = int(db.connection.execute("PRAGMA page_count").fetchone()[0])
            db.connection.execute(f"PRAGMA max_page_count = {n}")  # the disk is full now
        with caplog.at_level(logging.INFO, "guardian.db"):
            for _ in range(15):  # each crash and restart writes rows; soon one needs a page
                killed = sigkill_victim(pidfile)
                assert await until(lambda k=killed: restarted(pidfile, port, k), 20)  # no crash
                # The writer thread writes after the loop moves on: give it a moment.
                if await until(lambda: db.trouble is not None, 2):
                    break
            assert db.trouble and "disk full" in g.state.problems["store"]
            # Guardian's own trouble is no verdict on the target: a healthy victim is left
            # alone while the disk stays full (4 check intervals).
            calm = read_pid(pidfile)
            await asyncio.sleep(2.0)
            assert read_pid(pidfile) == calm and http_ok(port)
            failed = [r for r in caplog.records if getattr(r, "event", "") == "store_write_failed"]
            assert len(failed) == 1  # rate-limited: one line, not one per write

            with db.lock:
                db.connection.execute("PRAGMA max_page_count = 1073741823")  # space again
            old = sigkill_victim(pidfile)
            assert await until(lambda: restarted(pidfile, port, old), 20)
            assert await until(lambda: "store" not in g.state.problems, 10)
        assert any(getattr(r, "event", "") == "store_recovered" for r in caplog.records)
        assert await until(lambda: _row_attempts(db.path) >= 1, 10)
        assert g.breakers.load()["victim"].attempts == _row_attempts(db.path)
    finally:
        await g.stop()
