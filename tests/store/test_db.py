"""guardian.db with real SQLite files: opening, damage, lost files, full disks, migrations."""

from __future__ import annotations

import errno
import logging
import re
import sqlite3
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest

from guardian.incidents.store import INCIDENTS, MIGRATIONS, SCHEMA_VERSION, Store
from guardian.recovery.breakers import BREAKERS, BreakerRecord, SqliteBreakerStore
from guardian.store.db import (
    PROBLEM_KEY,
    Component,
    Database,
    StoreDamaged,
    StoreNewer,
    StoreUnavailable,
    classify,
)

WHEN = datetime(2026, 12, 1, 22, 15, 0, tzinfo=UTC)


class Problems:
    """The ProblemSink the daemon's State is, recorded."""

    def __init__(self) -> None:
        self.problems: dict[str, str] = {}
        self.history: list[tuple[str, str | None]] = []

    def set_problem(self, key: str, message: str) -> None:
        self.problems[key] = message
        self.history.append((key, message))

    def clear_problem(self, key: str) -> None:
        self.problems.pop(key, None)
        self.history.append((key, None))


def events(caplog: pytest.LogCaptureFixture, name: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "event", None) == name]


def filled_store(path: Path) -> None:
    """A store as Guardian leaves it: an open breaker, an open incident, some results."""
    db = Database(path)
    breakers = SqliteBreakerStore(db)
    breakers.save("comfyui", BreakerRecord(attempts=3, breaker_open=True))
    store = Store(db)
    store.open_incident("comfyui", WHEN, "critical", "gave up")
    for i in range(200):
        store.add_notification(1, "comfyui", "mail", f"t{i}", WHEN, True, "x" * 100)
    db.close()


def zero_pages(path: Path, first: int = 2, last: int = 4) -> None:
    """What `dd if=/dev/zero of=guardian.db bs=4096 seek=1 count=3 conv=notrunc` does."""
    with sqlite3.connect(path) as con:
        page = int(con.execute("PRAGMA page_size").fetchone()[0])
        assert int(con.execute("PRAGMA page_count").fetchone()[0]) > last
    con.close()
    with open(path, "r+b") as f:
        f.seek((first - 1) * page)
        f.write(b"\0" * page * (last - first + 1))


# ---------------------------------------------------------------------- opening


def test_a_fresh_file_is_wal_with_a_schema_table_and_a_marker(tmp_path: Path) -> None:
    db = Database(tmp_path / "sub" / "guardian.db")
    assert db.persistent and db.problem() is None
    con = db.connection
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert con.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert con.execute("PRAGMA busy_timeout").fetchone()[0] == 10000
    assert con.execute("SELECT name FROM sqlite_master WHERE name = 'guardian_schema'").fetchone()
    assert db.marker.is_file()
    db.close()


def test_the_connection_may_be_used_from_another_thread(tmp_path: Path) -> None:
    import threading

    db = Database(tmp_path / "g.db")
    breakers = SqliteBreakerStore(db)
    breakers.save("api", BreakerRecord(attempts=1))
    seen: list[object] = []
    t = threading.Thread(target=lambda: seen.append(breakers.load()["api"].attempts))
    t.start()
    t.join()
    assert seen == [1]
    db.close()


@pytest.mark.parametrize("damage", ["zero_pages", "not_a_database"])
def test_a_damaged_file_is_moved_aside_and_a_fresh_one_used(
    tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "guardian.db"
    if damage == "zero_pages":
        filled_store(path)
        zero_pages(path)
    else:
        path.write_bytes(b"this is not a database" * 300)
    damaged = path.read_bytes()
    problems = Problems()
    with caplog.at_level(logging.ERROR, "guardian.db"):
        db = Database(path, problems=problems, recover=True, now=lambda: WHEN)
    kept = tmp_path / "guardian.db.corrupt-20261201T221500Z"
    assert db.moved_to == [kept]
    assert kept.read_bytes() == damaged  # kept, byte for byte
    assert db.persistent and db.integrity_check() == "ok"
    (record,) = events(caplog, "store_damaged")
    assert record.levelno == logging.ERROR and record.moved_to == str(kept)  # type: ignore[attr-defined]
    assert str(kept) in problems.problems[PROBLEM_KEY]
    breakers = SqliteBreakerStore(db)  # components work on the fresh file
    assert breakers.load() == {}
    breakers.save("api", BreakerRecord(attempts=1))
    db.close()
    assert SqliteBreakerStore(path).load()["api"].attempts == 1


def test_a_second_damage_in_the_same_second_does_not_overwrite_the_first(tmp_path: Path) -> None:
    path = tmp_path / "guardian.db"
    for _ in range(2):
        path.write_bytes(b"garbage!" * 1000)
        Database(path, recover=True, now=lambda: WHEN).close()
    names = sorted(p.name for p in tmp_path.glob("guardian.db.corrupt-*"))
    assert names == [
        "guardian.db.corrupt-20261201T221500Z",
        "guardian.db.corrupt-20261201T221500Z.2",
    ]


def test_without_recovery_a_damaged_file_is_an_error_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "guardian.db"
    filled_store(path)
    zero_pages(path)
    before = path.read_bytes()
    with pytest.raises(StoreDamaged, match="is damaged"):
        Store(path)
    assert path.read_bytes() == before
    assert not list(tmp_path.glob("*.corrupt-*"))


@pytest.mark.parametrize("how", ["empty", "missing"])
def test_a_file_guardian_wrote_before_found_empty_or_missing_is_state_lost(
    tmp_path: Path, how: str, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "guardian.db"
    filled_store(path)
    for side in ("-wal", "-shm"):
        tmp_path.joinpath("guardian.db" + side).unlink(missing_ok=True)
    if how == "empty":
        path.write_bytes(b"")
    else:
        path.unlink()
    problems = Problems()
    with caplog.at_level(logging.WARNING, "guardian.db"):
        db = Database(path, problems=problems, recover=True)
    (record,) = events(caplog, "store_lost")
    assert record.levelno == logging.WARNING and "state lost" in record.getMessage()
    assert db.lost and "state lost" in problems.problems[PROBLEM_KEY]
    db.close()


def test_a_first_start_is_not_state_lost(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "guardian.db"
    path.write_bytes(b"")  # e.g. touched by an installer
    with caplog.at_level(logging.DEBUG, "guardian.db"):
        db = Database(path, problems=Problems(), recover=True)
    assert not db.lost and db.problem() is None and not caplog.records
    db.close()


def test_an_unopenable_path_falls_back_to_memory(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    problems = Problems()
    db = Database(blocker / "guardian.db", problems=problems, recover=True)
    assert not db.persistent and "in-memory" in problems.problems[PROBLEM_KEY]
    SqliteBreakerStore(db).save("api", BreakerRecord(attempts=2))  # still works, in memory
    db.close()


# ---------------------------------------------------------------------- damage mid-run


@pytest.mark.parametrize("found_by", ["write", "read"])
def test_damage_found_mid_run_keeps_breakers_and_open_incidents(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, found_by: str
) -> None:
    path = tmp_path / "guardian.db"
    problems = Problems()
    db = Database(path, problems=problems, recover=True, now=lambda: WHEN)
    store = Store(db)
    breakers = SqliteBreakerStore(db)
    breakers.save("comfyui", BreakerRecord(attempts=3, breaker_open=True))
    incident = store.open_incident("comfyui", WHEN, "critical", "gave up")
    store.update_incident(incident.id, status="escalated", escalated_at=WHEN)
    resolved = store.open_incident("panel", WHEN, "minor", "blip")
    store.update_incident(resolved.id, status="resolved", resolved_at=WHEN)
    for i in range(200):
        store.add_notification(incident.id, "comfyui", "mail", f"t{i}", WHEN, True, "x" * 100)
    db.connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    zero_pages(path)
    with sqlite3.connect(path) as other:  # another writer: our page cache is dropped
        other.execute("PRAGMA application_id = 7")
    other.close()

    with caplog.at_level(logging.WARNING):
        if found_by == "read":
            assert db.version("breakers") == 1  # page 2: guardian_schema, read on a fresh file
            assert store.notifications() == []  # the history went with the damaged file
        rid = store.add_notification(incident.id, "comfyui", "mail", "after", WHEN, True)
    assert rid > 0  # on the fresh file (the write that found the damage was retried there)
    assert len(db.moved_to) == 1 and db.moved_to[0].exists()
    assert events(caplog, "store_damaged") and "damaged" in problems.problems[PROBLEM_KEY]
    db.close()

    # What a restarted Guardian reads from the fresh file: nothing that mattered was lost.
    fresh = Database(path)
    assert SqliteBreakerStore(fresh).load()["comfyui"].breaker_open
    reopened = Store(fresh)
    (kept,) = reopened.open_incidents()
    assert (kept.id, kept.status, kept.escalated_at) == (incident.id, "escalated", WHEN)
    assert [n.transition for n in reopened.notifications()] == ["after"]
    assert reopened.open_incident("api", WHEN, "major", "x").id > resolved.id  # no id reuse
    fresh.close()


# ---------------------------------------------------------------------- full disk


def small_pages(path: Path) -> None:
    """A file with 512-byte pages, so a few rows need a new page (and hit the limit)."""
    con = sqlite3.connect(path)
    con.execute("PRAGMA page_size = 512")
    con.execute("VACUUM")
    con.close()


def cap_pages(db: Database) -> None:
    """SQLITE_FULL from now on: the file may not grow past its current size."""
    n = int(db.connection.execute("PRAGMA page_count").fetchone()[0])
    db.connection.execute(f"PRAGMA max_page_count = {n}")


def uncap_pages(db: Database) -> None:
    db.connection.execute("PRAGMA max_page_count = 1073741823")


def test_a_full_disk_is_reported_once_kept_in_memory_and_cleared(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "guardian.db"
    small_pages(path)
    now = [0.0]
    problems = Problems()
    db = Database(path, problems=problems, recover=True, monotonic=lambda: now[0], log_every=60)
    breakers = SqliteBreakerStore(db)
    store = Store(db, prune_every=0)
    cap_pages(db)
    big = BreakerRecord(attempts=50, attempt_times=[WHEN.isoformat()] * 50, breaker_open=True)
    with caplog.at_level(logging.INFO, "guardian.db"):
        breakers.save("comfyui", big)  # no exception: kept for later
        incident = store.open_incident("comfyui", WHEN, "critical", "x" * 600)
        updated = store.update_incident(incident.id, failure_count=4)
        for _ in range(20):
            assert store.add_notification(None, "c", "mail", "t", WHEN, True, "y" * 600) == 0
        now[0] = 61.0
        store.add_notification(None, "c", "mail", "t", WHEN, True, "y" * 600)
    assert breakers.unsaved == {"comfyui"} and store.unsaved == {incident.id}
    assert breakers.load()["comfyui"].breaker_open  # what Guardian sees is still right
    assert store.incident(incident.id) == updated and store.open_incidents() == [updated]
    assert store.dropped == 21
    failed = events(caplog, "store_write_failed")
    assert len(failed) == 2  # the first, and one more after log_every with the count
    assert "disk full" in failed[0].getMessage()
    assert "(1 failed since the last report)" in failed[0].getMessage()
    assert re.search(r"\((2\d) failed since the last report\)", failed[1].getMessage())
    assert "disk full" in problems.problems[PROBLEM_KEY]
    with pytest.raises(StoreUnavailable):
        db.write(
            lambda c: c.execute(
                "INSERT INTO results (target, check_name, kind, status,"
                " reason, vals, started, finished, duration) VALUES"
                " (?,?,?,?,?,?,?,?,?)",
                ("t", "c", "k", "ok", "z" * 2000, "{}", "a", "b", 0.0),
            )
        )

    uncap_pages(db)
    with caplog.at_level(logging.INFO, "guardian.db"):
        breakers.save("panel", BreakerRecord(attempts=1))
    assert events(caplog, "store_recovered")
    assert PROBLEM_KEY not in problems.problems
    assert breakers.unsaved == set()
    store.add_notification(incident.id, "c", "mail", "after", WHEN, True)
    assert store.unsaved == set()
    db.close()
    fresh = Database(path)
    assert SqliteBreakerStore(fresh).load()["comfyui"] == big
    assert Store(fresh).incident(incident.id) == updated
    fresh.close()


def test_full_disk_does_not_clear_a_damage_problem(tmp_path: Path) -> None:
    path = tmp_path / "guardian.db"
    path.write_bytes(b"garbage!" * 1000)
    problems = Problems()
    db = Database(path, problems=problems, recover=True)
    breakers = SqliteBreakerStore(db)
    cap_pages(db)
    breakers.save("x", BreakerRecord(attempt_times=["t" * 40] * 200))
    assert "disk full" in problems.problems[PROBLEM_KEY]
    uncap_pages(db)
    breakers.save("y", BreakerRecord())
    assert "damaged" in problems.problems[PROBLEM_KEY]
    assert "disk full" not in problems.problems[PROBLEM_KEY]
    db.close()


def test_error_kinds() -> None:
    assert classify(OSError(errno.ENOSPC, "No space left on device")) == "full"
    assert classify(sqlite3.DatabaseError("database disk image is malformed")) == "damaged"
    assert classify(sqlite3.DatabaseError("file is not a database")) == "damaged"
    assert classify(sqlite3.OperationalError("database or disk is full")) == "full"
    assert classify(sqlite3.OperationalError("database is locked")) == "busy"
    assert classify(sqlite3.IntegrityError("UNIQUE constraint failed")) == "other"


# ---------------------------------------------------------------------- migrations

# The schema of the store as main wrote it before guardian.db existed (commit faaa67e):
# incidents versioned in PRAGMA user_version, breakers with a guardian_schema row.
OLD_INCIDENT_SQL = MIGRATIONS  # shipped entries never change: these are main's exact SQL
OLD_BREAKER_SQL = (
    "CREATE TABLE IF NOT EXISTS breakers ( target TEXT PRIMARY KEY, attempts INTEGER NOT NULL,"
    " attempt_times TEXT NOT NULL, last_restart TEXT, breaker_open INTEGER NOT NULL,"
    " updated TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')));"
)


def write_old_main_file(path: Path, incident_version: int, breaker_row: bool) -> None:
    con = sqlite3.connect(path)
    for i in range(incident_version):
        con.executescript(
            f"BEGIN IMMEDIATE;\n{OLD_INCIDENT_SQL[i]}\nPRAGMA user_version = {i + 1};\nCOMMIT;"
        )
    con.execute(
        "INSERT INTO incidents (target, opened_at, severity, status) VALUES"
        " ('comfyui', '2026-01-01T00:00:00.000000+00:00', 'major', 'open')"
    )
    con.execute(
        "CREATE TABLE IF NOT EXISTS guardian_schema (component TEXT PRIMARY KEY,"
        " version INTEGER NOT NULL)"
    )
    con.execute(OLD_BREAKER_SQL)
    if breaker_row:
        con.execute("INSERT INTO guardian_schema VALUES ('breakers', 1)")
    con.execute(
        "INSERT INTO breakers (target, attempts, attempt_times, breaker_open)"
        " VALUES ('comfyui', 3, '[]', 1)"
    )
    con.commit()
    con.close()


@pytest.mark.parametrize(("incident_version", "breaker_row"), [(1, False), (2, True)])
def test_files_written_by_main_are_upgraded_in_place(
    tmp_path: Path, incident_version: int, breaker_row: bool
) -> None:
    path = tmp_path / "guardian.db"
    write_old_main_file(path, incident_version, breaker_row)
    db = Database(path, recover=True)
    store = Store(db)
    breakers = SqliteBreakerStore(db)
    assert db.version("incidents") == SCHEMA_VERSION and db.version("breakers") == 1
    assert [i.target for i in store.open_incidents()] == ["comfyui"]
    assert breakers.load()["comfyui"].breaker_open
    store.put_artifact(1, "log_tail", "[]", WHEN)  # the v2 table exists
    assert db.moved_to == [] and db.problem() is None
    db.close()
    with sqlite3.connect(path) as con:
        rows = dict(con.execute("SELECT component, version FROM guardian_schema").fetchall())
        # mirrored, so a Guardian from before guardian.db still opens this file
        assert con.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    con.close()
    assert rows == {"incidents": SCHEMA_VERSION, "breakers": 1}


@pytest.mark.parametrize("how", ["guardian_schema", "user_version"])
def test_a_newer_schema_is_refused_the_file_kept_and_memory_used(
    tmp_path: Path, how: str, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "guardian.db"
    con = sqlite3.connect(path)
    if how == "user_version":
        con.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 5}")
    else:
        con.execute("CREATE TABLE guardian_schema (component TEXT PRIMARY KEY, version INTEGER)")
        con.execute("INSERT INTO guardian_schema VALUES ('incidents', 99)")
    con.commit()
    con.close()
    before = path.read_bytes()

    with pytest.raises(StoreNewer, match="newer than this Guardian"):
        Store(path)  # a reader (CLI) refuses it plainly

    problems = Problems()
    with caplog.at_level(logging.ERROR, "guardian.db"):
        db = Database(path, problems=problems, recover=True, components=(INCIDENTS, BREAKERS))
        breakers = SqliteBreakerStore(db)
        breakers.save("api", BreakerRecord(attempts=1))
        store = Store(db)
    assert not db.persistent and db.moved_to == []
    assert events(caplog, "store_refused")
    assert "newer than this Guardian" in problems.problems[PROBLEM_KEY]
    incident = store.open_incident("api", WHEN, "major", "x")
    assert store.incident(incident.id) == incident and breakers.load()["api"].attempts == 1
    db.close()
    assert path.read_bytes() == before  # untouched, for the newer Guardian
    assert sorted(p.name for p in tmp_path.iterdir()) == ["guardian.db"]


def test_a_newer_schema_found_by_a_late_component_moves_everyone_to_memory(
    tmp_path: Path,
) -> None:
    path = tmp_path / "guardian.db"
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE guardian_schema (component TEXT PRIMARY KEY, version INTEGER)")
    con.execute("INSERT INTO guardian_schema VALUES ('incidents', 99)")
    con.commit()
    con.close()
    problems = Problems()
    db = Database(path, problems=problems, recover=True)  # incidents not named at open
    breakers = SqliteBreakerStore(db)
    breakers.save("api", BreakerRecord(attempts=1))
    Store(db)  # refused here: breakers move to memory too, their state re-saved there
    assert not db.persistent and breakers.load()["api"].attempts == 1
    assert "newer than this Guardian" in problems.problems[PROBLEM_KEY]
    db.close()
    with sqlite3.connect(path) as con:
        assert (
            con.execute(
                "SELECT version FROM guardian_schema WHERE component = 'incidents'"
            ).fetchone()[0]
            == 99
        )
    con.close()


def test_another_component_registers_its_own_migrations(tmp_path: Path) -> None:
    path = tmp_path / "guardian.db"
    v1 = Component("uptime", ("CREATE TABLE uptime (target TEXT, day TEXT, up REAL);",))
    db = Database(path)
    SqliteBreakerStore(db)
    db.register(v1)
    db.write(lambda c: c.execute("INSERT INTO uptime VALUES ('api', '2026-12-01', 0.99)"))
    db.close()

    v2 = Component("uptime", (*v1.migrations, "ALTER TABLE uptime ADD COLUMN checks INTEGER;"))
    db = Database(path)
    db.register(BREAKERS)
    db.register(v2)
    assert db.version("uptime") == 2 and db.version("breakers") == 1
    row = db.read(lambda c: c.execute("SELECT target, up, checks FROM uptime").fetchone())
    assert tuple(row) == ("api", 0.99, None)
    db.close()
    with pytest.raises(ValueError, match="component name"):
        Component("up time; DROP", ())


def test_a_failed_migration_leaves_the_version_where_it_was(tmp_path: Path) -> None:
    path = tmp_path / "guardian.db"
    bad = Component("uptime", ("CREATE TABLE uptime (a);", "CREATE TABLE uptime (b);"))
    db = Database(path)
    with pytest.raises(Exception, match="already exists"):
        db.register(bad)
    assert db.version("uptime") == 1
    db.close()


def test_a_flapping_full_disk_does_not_flood_the_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "guardian.db"
    small_pages(path)
    now = [0.0]
    problems = Problems()
    db = Database(path, problems=problems, recover=True, monotonic=lambda: now[0])
    breakers = SqliteBreakerStore(db)
    with caplog.at_level(logging.INFO, "guardian.db"):
        for i in range(10):  # full, then space, then full again ... within one minute
            now[0] += 1
            cap_pages(db)
            breakers.save(f"t{i}", BreakerRecord(attempt_times=["t" * 40] * 100))
            assert PROBLEM_KEY in problems.problems
            uncap_pages(db)
            breakers.save("ok", BreakerRecord())
            assert PROBLEM_KEY not in problems.problems
    assert len(events(caplog, "store_write_failed")) == 1
    assert len(events(caplog, "store_recovered")) == 1
    assert breakers.unsaved == set()  # every kept record was written once space came back
    db.close()


# ---------------------------------------------------------------- the read-only connection


def _blocked_snapshot(db: Database) -> tuple[threading.Thread, threading.Event, threading.Event,
                                              list[object]]:
    """A reader thread that opens a snapshot, reads, and waits there until released."""
    inside, release, seen = threading.Event(), threading.Event(), []

    def fn(c: sqlite3.Connection) -> None:
        seen.append(c.execute("SELECT count(*) FROM t").fetchone()[0])
        inside.set()
        release.wait(30)
        seen.append(c.execute("SELECT count(*) FROM t").fetchone()[0])

    reader = threading.Thread(target=db.snapshot, args=(fn,), daemon=True)
    reader.start()
    assert inside.wait(30)
    return reader, inside, release, seen


def test_a_write_completes_while_a_snapshot_read_is_open(tmp_path: Path) -> None:
    """Heavy API reads use the read-only connection: a writer (the event loop) neither
    waits for them nor disturbs what they read."""
    db = Database(tmp_path / "g.db", recover=True)
    db.write(lambda c: c.execute("CREATE TABLE t (x INTEGER)"))
    db.write(lambda c: c.execute("INSERT INTO t VALUES (1)"))
    reader, _, release, seen = _blocked_snapshot(db)
    try:
        # The read transaction is open and the reader holds its lock: the write must not
        # need either (it would wait here until release and the assert below would fail).
        writer = threading.Thread(
            target=db.write, args=(lambda c: c.execute("INSERT INTO t VALUES (2)"),), daemon=True)
        writer.start()
        writer.join(30)
        assert not writer.is_alive(), "the write waited for the reader"
        assert reader.is_alive() and not release.is_set()
        assert db.read(lambda c: c.execute("SELECT count(*) FROM t").fetchone()[0]) == 2
    finally:
        release.set()
        reader.join(30)
    assert seen == [1, 1]  # one snapshot for the whole read
    assert db.snapshot(lambda c: c.execute("SELECT count(*) FROM t").fetchone()[0]) == 2
    db.close()


def test_the_read_only_connection_cannot_write(tmp_path: Path) -> None:
    db = Database(tmp_path / "g.db", recover=True)
    db.write(lambda c: c.execute("CREATE TABLE t (x INTEGER)"))
    with pytest.raises(sqlite3.Error):
        db.snapshot(lambda c: c.execute("INSERT INTO t VALUES (1)"))
    assert db.read(lambda c: c.execute("SELECT count(*) FROM t").fetchone()[0]) == 0
    db.close()


def test_a_snapshot_follows_a_file_replaced_after_damage(tmp_path: Path) -> None:
    """Damage seen by a snapshot read is handled by the writer's rules (moved aside, a
    fresh file); the next snapshot reads the fresh file, not the one moved aside."""
    path, problems = tmp_path / "g.db", Problems()
    db = Database(path, recover=True, problems=problems, components=(INCIDENTS,))
    Store(db)
    db.write(lambda c: c.execute("CREATE TABLE t (x INTEGER)"))
    db.write(lambda c: c.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(5000)]))
    assert db.snapshot(lambda c: c.execute("SELECT count(*) FROM t").fetchone()[0]) == 5000
    db.connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    size = path.stat().st_size
    with open(path, "r+b") as f:  # every page but the first zeroed (`dd conv=notrunc`)
        f.seek(4096)
        f.write(b"\0" * (size - 4096))
    with sqlite3.connect(path) as other:  # another writer: cached pages are dropped
        other.execute("PRAGMA application_id = 7")
    other.close()

    def count(c: sqlite3.Connection) -> int:
        return int(c.execute("SELECT count(*) FROM t").fetchone()[0])

    with pytest.raises(sqlite3.Error):  # the fresh file has no table t: that is the answer
        db.snapshot(count)
    assert db.moved_to and PROBLEM_KEY in problems.problems
    db.write(lambda c: c.execute("CREATE TABLE t (x INTEGER)"))
    assert db.snapshot(count) == 0
    db.close()


def test_a_snapshot_on_memory_is_an_ordinary_read() -> None:
    db = Database(":memory:")
    db.write(lambda c: c.execute("CREATE TABLE t (x INTEGER)"))
    assert db.snapshot(lambda c: c.execute("SELECT count(*) FROM t").fetchone()[0]) == 0
    db.close()
