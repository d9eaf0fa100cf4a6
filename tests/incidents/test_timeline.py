"""The incident timeline in a real SQLite file with many incidents and events: one query
for every incident shown, through its index (asserted on the query plan, not on timing)."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from guardian.core.events import RecoveryEvent, RecoveryKind
from guardian.incidents.store import INCIDENTS, SCHEMA_VERSION, Store
from guardian.incidents.timeline import incident_dicts, timeline_events, timeline_sql
from guardian.store.db import Database

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
INCIDENTS_N = 400
UNLINKED_N = 20_000


def plan(con: sqlite3.Connection, sql: str, args: tuple[object, ...]) -> list[str]:
    return [str(r[3]) for r in con.execute("EXPLAIN QUERY PLAN " + sql, args)]


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """400 incidents of 20 targets, 30 recovery events each (written out of time order, as
    adoption links older events later), and 20 000 events no incident claimed."""
    path = tmp_path_factory.mktemp("timeline") / "guardian.db"
    store = Store(path, prune_every=0)
    for n in range(INCIDENTS_N):
        store.open_incident(f"t{n % 20}", T0 + timedelta(minutes=n), "major", f"cause {n}")
    kinds = [RecoveryKind.RESTART_STARTED, RecoveryKind.RESTART_SUCCEEDED]

    def fill(c: sqlite3.Connection) -> None:
        rows = [
            (n + 1, f"t{n % 20}", str(kinds[e % 2]),
             (T0 + timedelta(minutes=n, seconds=30 - e)).isoformat(timespec="microseconds"),
             e, "", "", "{}")
            for n in range(INCIDENTS_N) for e in range(30)
        ]
        rows += [
            (None, f"t{i % 20}", "restart_started",  # type: ignore[misc]
             (T0 - timedelta(seconds=i)).isoformat(timespec="microseconds"), 1, "", "", "{}")
            for i in range(UNLINKED_N)
        ]
        c.executemany(
            "INSERT INTO recovery (incident_id, target, kind, time, attempt, reason, detail,"
            " vals) VALUES (?,?,?,?,?,?,?,?)",
            rows,
        )

    store.db.write(fill)
    store.close()
    return path


def test_one_indexed_query_for_every_incident_shown(big: Path) -> None:
    store = Store(big, prune_every=0)
    shown = store.incidents(include_resolved=True, limit=50)
    statements: list[str] = []
    # Reads go through this thread's read-only connection: trace that one.
    store.db.snapshot(lambda c: c.set_trace_callback(statements.append))
    dicts = incident_dicts(store, shown)
    store.db.snapshot(lambda c: c.set_trace_callback(None))
    on_recovery = [s for s in statements if "FROM recovery" in s]
    assert len(on_recovery) == 1  # not one per incident
    assert len(dicts) == 50 and all(len(d["timeline"]) == 31 for d in dicts)  # opened + 30
    first = dicts[0]["timeline"]
    assert first[0]["kind"] == "opened"
    assert [e["time"] for e in first] == sorted(e["time"] for e in first)  # time order
    ids = [i.id for i in shown]
    steps = plan(store.db.connection, timeline_sql(len(ids)), (*ids, 200))
    assert any("USING INDEX recovery_timeline (incident_id=?)" in s for s in steps), steps
    assert not any(s.startswith("SCAN recovery") for s in steps), steps
    store.close()


def test_the_newest_events_of_each_incident_are_kept(big: Path) -> None:
    store = Store(big, prune_every=0)
    events = timeline_events(store, [1, 2, 999_999], per_incident=5)
    assert sorted(events) == [1, 2, 999_999] and events[999_999] == []
    assert [e.attempt for e in events[1]] == [4, 3, 2, 1, 0]  # the 5 newest, oldest first
    assert all(e.incident_id == 2 for e in events[2])
    store.close()


def test_an_open_incident_adopts_recent_unlinked_events_through_its_index(big: Path) -> None:
    db = Database(big, components=(INCIDENTS,))
    store = Store(db, prune_every=0)
    sql = ("UPDATE recovery SET incident_id = ? WHERE target = ? AND incident_id IS NULL"
           " AND time >= ?")
    steps = plan(db.connection, sql, (1, "t3", T0.isoformat()))
    assert steps == ["SEARCH recovery USING INDEX recovery_unlinked (target=? AND time>?)"]
    incident = store.open_incident("t3", T0, "major", "x")
    store.add_recovery(RecoveryEvent("t3", RecoveryKind.RESTART_STARTED, T0, attempt=1))
    assert store.adopt_recovery("t3", incident.id, T0 - timedelta(seconds=100)) == 6
    db.close()


def test_the_migration_replaces_the_old_index(tmp_path: Path) -> None:
    path = tmp_path / "guardian.db"
    con = sqlite3.connect(path)
    con.executescript(
        "CREATE TABLE guardian_schema (component TEXT PRIMARY KEY, version INTEGER NOT NULL);"
        + INCIDENTS.migrations[0] + INCIDENTS.migrations[1]
        + "INSERT INTO guardian_schema VALUES ('incidents', 2); PRAGMA user_version = 2;"
    )
    con.close()
    store = Store(path)
    assert store.schema_version == SCHEMA_VERSION == 3
    names = {
        r[0] for r in store.db.connection.execute(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'recovery'")
    }
    assert {"recovery_timeline", "recovery_unlinked", "recovery_time"} <= names
    assert "recovery_incident" not in names  # its prefix is recovery_timeline's
    store.close()
