"""`guardian incidents` / `guardian report` on a damaged, empty, newer or old store file.

A reader reports the trouble in one clear line and exits 1, never a traceback, and never
moves or rewrites the daemon's file.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from guardian.incidents.store import MIGRATIONS, Store
from guardian.recovery.breakers import BreakerRecord, SqliteBreakerStore
from guardian.store.db import Database

SRC = Path(__file__).resolve().parents[2] / "src"
WHEN = datetime(2026, 12, 1, 22, 0, tzinfo=UTC)


def config(tmp: Path) -> Path:
    path = tmp / "guardian.toml"
    path.write_text(f"""
[guardian]
log_dir = "{tmp / "logs"}"
report_dir = "{tmp / "reports"}"
state_dir = "{tmp / "state"}"
[[targets]]
name = "comfyui"
[[targets.checks]]
kind = "http"
url = "http://127.0.0.1:1/"
""")
    (tmp / "state").mkdir()
    return path


def guardian(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "guardian", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin", "COLUMNS": "200"},
    )


def filled(path: Path) -> None:
    db = Database(path)
    SqliteBreakerStore(db).save("comfyui", BreakerRecord(breaker_open=True))
    store = Store(db)
    inc = store.open_incident("comfyui", WHEN, "critical", "gave up")
    for i in range(200):
        store.add_notification(inc.id, "comfyui", "mail", f"t{i}", WHEN, True, "x" * 100)
    db.close()


@pytest.mark.parametrize("command", [["incidents", "--all"], ["report", "1"]])
def test_a_damaged_store_is_reported_clearly(tmp_path: Path, command: list[str]) -> None:
    cfg = config(tmp_path)
    store = tmp_path / "state" / "guardian.db"
    filled(store)
    with open(store, "r+b") as f:
        f.seek(4096)
        f.write(b"\0" * 4096 * 3)
    before = store.read_bytes()
    done = guardian(*command, "--config", str(cfg))
    assert done.returncode == 1
    assert "is damaged" in done.stderr and "moves a damaged store aside" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    assert store.read_bytes() == before
    assert sorted(p.name for p in store.parent.iterdir()) == ["guardian.db", "guardian.db.written"]


@pytest.mark.slow
def test_an_empty_store_is_not_turned_into_a_fresh_one(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    store = tmp_path / "state" / "guardian.db"
    store.write_bytes(b"")
    listed = guardian("incidents", "--config", str(cfg))
    assert listed.returncode == 0 and "no incidents recorded" in listed.stdout
    report = guardian("report", "1", "--config", str(cfg))
    assert report.returncode == 1 and "the incident store is empty" in report.stderr
    assert store.stat().st_size == 0  # the daemon still sees it as lost, not as fine


def test_a_newer_store_is_refused_by_the_cli(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    store = tmp_path / "state" / "guardian.db"
    con = sqlite3.connect(store)
    con.execute("PRAGMA user_version = 99")
    con.close()
    done = guardian("incidents", "--config", str(cfg))
    assert done.returncode == 1 and "newer than this Guardian" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_file_written_by_main_reads_after_upgrade(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    store = tmp_path / "state" / "guardian.db"
    con = sqlite3.connect(store)
    for i, sql in enumerate(MIGRATIONS):  # main's own SQL and its user_version steps
        con.executescript(f"BEGIN IMMEDIATE;\n{sql}\nPRAGMA user_version = {i + 1};\nCOMMIT;")
    con.execute(
        "INSERT INTO incidents (target, opened_at, severity, status, summary) VALUES"
        " ('comfyui', '2026-01-01T00:00:00.000000+00:00', 'major', 'open', 'old one')"
    )
    con.commit()
    con.close()
    done = guardian("incidents", "--config", str(cfg))
    assert done.returncode == 0, done.stderr
    assert "old one" in done.stdout
