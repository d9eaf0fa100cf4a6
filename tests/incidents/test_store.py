"""The SQLite store: schema/migrations, round trips, retention, and SIGKILL durability."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from incidents_helpers import SRC, recovery, result

from guardian.core.clock import FakeClock
from guardian.core.events import RecoveryKind
from guardian.core.result import Status
from guardian.incidents.store import MIGRATIONS, SCHEMA_VERSION, Store, StoreError
from guardian.store.db import StoreDamaged


def test_fresh_store_is_wal_and_current_schema(tmp_path: Path) -> None:
    store = Store(tmp_path / "sub" / "g.db")
    assert store.schema_version == SCHEMA_VERSION == len(MIGRATIONS)
    assert store.db.connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store.db.connection.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    assert store.integrity_check() == "ok"
    store.close()


def test_migrates_an_old_schema_in_place(tmp_path: Path) -> None:
    path = tmp_path / "g.db"
    db = sqlite3.connect(path)
    db.executescript(MIGRATIONS[0] + "\nPRAGMA user_version = 1;")
    db.execute(
        "INSERT INTO incidents (target, opened_at, severity, status) VALUES"
        " ('comfyui', '2026-01-01T00:00:00.000000+00:00', 'major', 'open')"
    )
    db.commit()
    db.close()
    store = Store(path)
    assert store.schema_version == SCHEMA_VERSION
    assert [i.target for i in store.open_incidents()] == ["comfyui"]  # data kept
    store.put_artifact(1, "log_tail", "[]", datetime.now(UTC))  # v2 table exists
    store.close()


def test_refuses_a_newer_schema(tmp_path: Path) -> None:
    path = tmp_path / "g.db"
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 5}")
    db.close()
    with pytest.raises(StoreError, match="newer than this Guardian"):
        Store(path)


def test_a_corrupt_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "g.db"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreDamaged, match=r"g\.db is damaged"):
        Store(path)
    # A reader (CLI, tools) never moves the daemon's file: only the daemon recovers.
    assert path.read_bytes() == b"this is not a database" * 100
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.db"]


def test_round_trips_results_recovery_incidents_notifications(tmp_path: Path) -> None:
    clock = FakeClock()
    store = Store(tmp_path / "g.db")
    inc = store.open_incident("comfyui", clock.now(), "major", "http: refused")
    r = result(clock, Status.FAILED, reason="HTTP 500", status_code=500, latency_ms=12.5)
    store.add_result(r, inc.id)
    store.add_recovery(recovery(clock, RecoveryKind.RESTART_STARTED, attempt=1), inc.id)
    store.add_notification(inc.id, "comfyui", "#1 json://[REDACTED]", "opened", clock.now(), True)
    inc2 = store.update_incident(inc.id, status="escalated", escalated_at=clock.now(), flap_count=2)

    assert inc2.status == "escalated" and inc2.flap_count == 2 and inc2.escalated_at == clock.now()
    (sr,) = store.results(incident_id=inc.id)
    assert (sr.check, sr.status, sr.reason) == ("http", "failed", "HTTP 500")
    assert sr.values == {"latency_ms": 12.5, "status_code": 500}
    assert sr.finished == r.finished
    (rv,) = store.recovery_events(incident_id=inc.id)
    assert (rv.kind, rv.attempt) == ("restart_started", 1)
    assert store.notified(inc.id, "opened") and not store.notified(inc.id, "resolved")
    assert store.last_statuses() == {("comfyui", "http"): "failed"}
    with pytest.raises(TypeError):  # identity stays: the typed update has no such field
        store.update_incident(inc.id, target="evil")  # type: ignore[call-arg]
    store.close()


def test_retention_prunes_old_rows_but_keeps_open_incidents(tmp_path: Path) -> None:
    clock = FakeClock()
    store = Store(tmp_path / "g.db", retention_days=1, max_events=100, now=clock.now)
    old_resolved = store.open_incident("panel", clock.now(), "minor", "old")
    store.add_result(result(clock, Status.FAILED, target="panel"), old_resolved.id)
    store.update_incident(old_resolved.id, status="resolved", resolved_at=clock.now())
    still_open = store.open_incident("comfyui", clock.now(), "major", "long-running")
    store.add_result(result(clock, Status.FAILED), still_open.id)
    store.add_result(result(clock, Status.OK, check="disk"))  # unlinked, old
    store.add_recovery(recovery(clock, RecoveryKind.EXITED))

    clock._t += 2 * 86400  # two days later
    store.add_result(result(clock, Status.OK, check="disk"))
    removed = store.prune()

    assert removed == {"incidents": 1, "results": 2, "recovery": 1, "notifications": 0}
    assert [i.id for i in store.incidents()] == [still_open.id]
    assert len(store.results(incident_id=still_open.id)) == 1  # open incident keeps its data
    assert store.counts()["results"] == 2
    store.close()


def test_max_events_caps_each_table_newest_kept(tmp_path: Path) -> None:
    clock = FakeClock()
    store = Store(tmp_path / "g.db", max_events=100, prune_every=0, now=clock.now)
    for i in range(250):
        store.add_result(result(clock, Status.OK, reason=f"r{i}"))
    store.prune()
    rows = store.results()
    assert len(rows) == 100
    assert rows[0].reason == "r150" and rows[-1].reason == "r249"
    store.close()


def test_prunes_periodically_by_itself(tmp_path: Path) -> None:
    clock = FakeClock()
    store = Store(tmp_path / "g.db", max_events=100, prune_every=50, now=clock.now)
    for _ in range(349):
        store.add_result(result(clock, Status.OK))
    assert store.counts()["results"] <= 150  # pruned every 50 writes, never far over the cap
    store.close()


_WRITER = textwrap.dedent(
    """
    import sys
    from datetime import UTC, datetime
    sys.path.insert(0, sys.argv[2])
    from guardian.core.events import RecoveryEvent, RecoveryKind
    from guardian.incidents.store import Store
    from guardian.core.result import CheckResult, Status

    store = Store(sys.argv[1], prune_every=0)
    inc = store.open_incident("comfyui", datetime.now(UTC), "major", "crash loop")
    print("ready", flush=True)
    i = 0
    while True:
        now = datetime.now(UTC)
        r = CheckResult("comfyui", "http", "http", Status.FAILED, "refused " + "x" * 200,
                        {"i": i}, now, now, 0.001)
        rid = store.add_result(r, inc.id)
        store.add_recovery(RecoveryEvent("comfyui", RecoveryKind.RESTART_FAILED, now, i), inc.id)
        inc = store.update_incident(inc.id, failure_count=i)
        print(rid, flush=True)
        i += 1
    """
)


def test_sigkill_at_random_moments_keeps_file_readable_and_acknowledged_writes(
    tmp_path: Path,
) -> None:
    """A writer in a tight loop is SIGKILLed 5 times; every write it reported is there."""
    path = tmp_path / "crash.db"
    script = tmp_path / "writer.py"
    script.write_text(_WRITER)
    rng = random.Random(1234)
    acknowledged = 0
    for _ in range(5):
        proc = subprocess.Popen(
            [sys.executable, str(script), str(path), str(SRC)],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "ready"
            time.sleep(rng.uniform(0.02, 0.4))
            os.kill(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate(timeout=10)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
        assert proc.returncode == -signal.SIGKILL
        ids = [int(line) for line in out.splitlines()[:-1] if line.strip().isdigit()]
        assert ids, "the writer made no progress before the kill"
        acknowledged = max(acknowledged, ids[-1])

        db = sqlite3.connect(path)  # a plain sqlite client must read it
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        max_id = db.execute("SELECT MAX(id) FROM results").fetchone()[0]
        db.close()
        assert max_id >= ids[-1]  # nothing acknowledged was lost

    store = Store(path)
    assert store.integrity_check() == "ok"
    assert len(store.incidents()) == 5
    rows = store.results(limit=1_000_000)
    assert len(rows) >= acknowledged  # ids run on across the five runs, no gaps, no deletes
    assert all(r.status == "failed" and r.reason.startswith("refused") for r in rows)
    assert store.counts()["recovery"] >= len(rows) - 5
    store.close()


def test_times_from_other_timezones_are_stored_as_utc(tmp_path: Path) -> None:
    store = Store(tmp_path / "g.db")
    a = datetime(2026, 1, 1, 23, 0, tzinfo=UTC)
    b = (a + timedelta(hours=2)).astimezone(timezone(timedelta(hours=-5)))  # 20:00 at -05:00
    later = store.open_incident("x", b, "minor", "")
    earlier = store.open_incident("y", a, "minor", "")
    assert [i.id for i in store.incidents()] == [earlier.id, later.id]  # newest id first
    got = store.incident(later.id)
    assert got is not None and got.opened_at == b and got.opened_at.utcoffset() == timedelta(0)
    assert (
        store.db.connection.execute(
            "SELECT id FROM incidents ORDER BY opened_at DESC LIMIT 1"
        ).fetchone()[0]
        == later.id
    )
    store.close()
