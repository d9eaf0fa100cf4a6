"""A store deleted or replaced under a running Guardian (issue 21, attack 11).

Real SQLite files: the file is deleted (or another file is moved over it) while the
Database is open. The next write says ``store_lost`` at once and writes back what the
process holds in memory, so the next start finds it, not an empty store.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from pathlib import Path

import pytest

from guardian.recovery.breakers import BREAKERS, BreakerRecord, SqliteBreakerStore
from guardian.store.db import Database


class Ticker:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


@pytest.mark.parametrize("how", ["deleted", "replaced"])
def test_vanished_store_is_reported_and_written_back(tmp_path: Path, how: str,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "guardian.db"
    ticker = Ticker()
    db = Database(path, recover=True, monotonic=ticker, components=(BREAKERS,))
    store = SqliteBreakerStore(db)
    store.save("comfyui", BreakerRecord(2, [], None, True))
    for suffix in ("", "-wal", "-shm"):
        with_suffix = path.with_name(path.name + suffix)
        if with_suffix.exists():
            with_suffix.unlink()
    if how == "replaced":
        other = tmp_path / "other.db"
        sqlite3.connect(other).close()
        os.replace(other, path)
    ticker.t += 5
    with caplog.at_level(logging.WARNING, logger="guardian.db"):
        store.save("panel", BreakerRecord(1, [], None, False))
    assert [r for r in caplog.records if getattr(r, "event", None) == "store_lost"]
    assert db.lost
    store.close()
    db.close()
    again = SqliteBreakerStore(path)
    try:
        found = again.load()
    finally:
        again.close()
    assert found["comfyui"].breaker_open and found["comfyui"].attempts == 2
    assert found["panel"].attempts == 1
