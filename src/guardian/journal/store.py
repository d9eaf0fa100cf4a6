"""The queue journal's tables: a component of Guardian's one SQLite file.

Per ComfyUI target it keeps the last known running and pending prompts (each the complete
``/queue`` item, ``extra_data`` with its secrets included: the store is the one place they
may live, and the file is kept 0600), whether a restore is due (a death was seen and not yet
repaired: survives Guardian's own restart), how often each prompt was running when the
server died, and the quarantined prompts. Every method is blocking SQLite: callers run them
off the event loop.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from guardian.checks.comfyui.client import QueuedPrompt
from guardian.store.db import Component, Database
from guardian.support.safe_open import make_private

QUEUE_MIGRATIONS = (
    """
    CREATE TABLE comfyui_queue (
        target TEXT NOT NULL,
        prompt_id TEXT NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('running', 'pending')),
        number REAL NOT NULL,
        item TEXT NOT NULL,
        PRIMARY KEY (target, prompt_id)
    );
    CREATE TABLE comfyui_queue_target (
        target TEXT PRIMARY KEY,
        restore_due INTEGER NOT NULL DEFAULT 0,
        death_reason TEXT NOT NULL DEFAULT '',
        stuck_prompt TEXT,
        restored INTEGER NOT NULL DEFAULT 0,
        restore_total INTEGER NOT NULL DEFAULT 0,
        restored_at TEXT,
        instance TEXT
    );
    CREATE TABLE comfyui_prompt_deaths (
        target TEXT NOT NULL,
        prompt_id TEXT NOT NULL,
        deaths INTEGER NOT NULL,
        PRIMARY KEY (target, prompt_id)
    );
    CREATE TABLE comfyui_quarantine (
        target TEXT NOT NULL,
        prompt_id TEXT NOT NULL,
        item TEXT NOT NULL,
        reason TEXT NOT NULL,
        quarantined_at TEXT NOT NULL,
        saved_to TEXT,
        PRIMARY KEY (target, prompt_id)
    );
    """,
)
QUEUE = Component("comfyui_queue", QUEUE_MIGRATIONS)


@dataclass(frozen=True)
class TargetState:
    """A target's restore bookkeeping."""

    restore_due: bool = False
    death_reason: str = ""
    stuck_prompt: str | None = None  # ended by the ladder for being stuck: never re-run
    restored: int = 0  # at the last restore
    restore_total: int = 0
    restored_at: str | None = None
    instance: str | None = None  # the supervised process (pid) the journal last read


@dataclass(frozen=True)
class Quarantined:
    target: str
    prompt: QueuedPrompt
    reason: str
    quarantined_at: str
    saved_to: str | None


@dataclass(frozen=True)
class Journaled:
    """What the journal holds for one target."""

    running: tuple[QueuedPrompt, ...]
    pending: tuple[QueuedPrompt, ...]  # by number


class JournalStore:
    """The queue journal's SQL. Writes only differences: a prompt's item is written once."""

    def __init__(self, db: Database) -> None:
        self.db = db
        db.register(QUEUE)
        self._private()

    def _private(self) -> None:
        """The journal holds API-node secrets: the file is the owner's alone (SQLite gives
        its -wal and -shm the main file's mode)."""
        if not self.db.persistent or os.name != "posix":
            return
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(OSError):
                make_private(self.db.path.with_name(self.db.path.name + suffix))

    # ------------------------------------------------------------------ the queue

    def load(self, target: str) -> Journaled:
        rows = self.db.read(lambda c: c.execute(
            "SELECT state, number, item FROM comfyui_queue WHERE target = ? ORDER BY number",
            (target,)).fetchall())
        running: list[QueuedPrompt] = []
        pending: list[QueuedPrompt] = []
        for row in rows:
            prompt = dataclasses.replace(QueuedPrompt.from_json(row["item"]),
                                         number=float(row["number"]))
            (running if row["state"] == "running" else pending).append(prompt)
        return Journaled(tuple(running), tuple(pending))

    def apply(self, target: str, removed: Iterable[str],
              added: Iterable[tuple[str, QueuedPrompt]],
              moved: Iterable[tuple[str, QueuedPrompt]]) -> None:
        """Remove, add and re-state prompts in one transaction."""
        gone = [(target, pid) for pid in removed]
        new = [(target, p.prompt_id, state, p.number, p.to_json()) for state, p in added]
        changed = [(state, p.number, target, p.prompt_id) for state, p in moved]

        def write(c: sqlite3.Connection) -> None:
            c.executemany("DELETE FROM comfyui_queue WHERE target = ? AND prompt_id = ?", gone)
            c.executemany("INSERT OR REPLACE INTO comfyui_queue VALUES (?, ?, ?, ?, ?)", new)
            c.executemany("UPDATE comfyui_queue SET state = ?, number = ? WHERE target = ?"
                          " AND prompt_id = ?", changed)

        if gone or new or changed:
            self.db.write(write)

    # ------------------------------------------------------------------ restore state

    def state(self, target: str) -> TargetState:
        row = self.db.read(lambda c: c.execute(
            "SELECT * FROM comfyui_queue_target WHERE target = ?", (target,)).fetchone())
        if row is None:
            return TargetState()
        return TargetState(bool(row["restore_due"]), row["death_reason"], row["stuck_prompt"],
                           row["restored"], row["restore_total"], row["restored_at"],
                           row["instance"])

    def save_state(self, target: str, state: TargetState) -> None:
        self.db.write(lambda c: c.execute(
            "INSERT OR REPLACE INTO comfyui_queue_target VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (target, int(state.restore_due), state.death_reason, state.stuck_prompt,
             state.restored, state.restore_total, state.restored_at, state.instance)))

    def add_death(self, target: str, prompt_id: str) -> int:
        """One more death while ``prompt_id`` ran; how many now."""
        def write(c: sqlite3.Connection) -> int:
            c.execute("INSERT INTO comfyui_prompt_deaths VALUES (?, ?, 1) ON CONFLICT"
                      " (target, prompt_id) DO UPDATE SET deaths = deaths + 1",
                      (target, prompt_id))
            row = c.execute("SELECT deaths FROM comfyui_prompt_deaths WHERE target = ? AND"
                            " prompt_id = ?", (target, prompt_id)).fetchone()
            return int(row[0])
        return self.db.write(write)

    def deaths(self, target: str, prompt_id: str) -> int:
        row = self.db.read(lambda c: c.execute(
            "SELECT deaths FROM comfyui_prompt_deaths WHERE target = ? AND prompt_id = ?",
            (target, prompt_id)).fetchone())
        return 0 if row is None else int(row[0])

    def forget_deaths(self, target: str, keep: set[str]) -> None:
        """Death counts only for prompts still journaled or quarantined."""
        rows = self.db.read(lambda c: c.execute(
            "SELECT prompt_id FROM comfyui_prompt_deaths WHERE target = ?", (target,)
        ).fetchall())
        gone = [(target, r[0]) for r in rows if r[0] not in keep]
        if gone:
            self.db.write(lambda c: c.executemany(
                "DELETE FROM comfyui_prompt_deaths WHERE target = ? AND prompt_id = ?", gone))

    # ------------------------------------------------------------------ quarantine

    def quarantine(self, target: str, prompt: QueuedPrompt, reason: str, at: datetime,
                   saved_to: str | None) -> None:
        self.db.write(lambda c: c.execute(
            "INSERT OR REPLACE INTO comfyui_quarantine VALUES (?, ?, ?, ?, ?, ?)",
            (target, prompt.prompt_id, prompt.to_json(), reason, at.isoformat(), saved_to)))

    def quarantined(self, target: str | None = None) -> list[Quarantined]:
        sql = "SELECT * FROM comfyui_quarantine"
        args: tuple[str, ...] = ()
        if target is not None:
            sql, args = sql + " WHERE target = ?", (target,)
        rows = self.db.read(lambda c: c.execute(sql + " ORDER BY quarantined_at",
                                                args).fetchall())
        return [Quarantined(r["target"], QueuedPrompt.from_json(r["item"]), r["reason"],
                            r["quarantined_at"], r["saved_to"]) for r in rows]

    def unquarantine(self, target: str, prompt_id: str) -> bool:
        def write(c: sqlite3.Connection) -> bool:
            c.execute("DELETE FROM comfyui_prompt_deaths WHERE target = ? AND prompt_id = ?",
                      (target, prompt_id))
            return c.execute("DELETE FROM comfyui_quarantine WHERE target = ? AND"
                             " prompt_id = ?", (target, prompt_id)).rowcount > 0
        return self.db.write(write)
