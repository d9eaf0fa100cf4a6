"""The shared component block of Guardian's SQLite file: register, migrate, reset.

Breakers, incidents and uptime are *components*: each brings its own ordered migrations
and records how far it got in one row of ``guardian_schema``. Registering migrates at
once; a file replaced mid-run (damage, a refused schema) is migrated again for every
component and each gets its reset hook, so it re-saves what it holds in memory. The
:class:`~guardian.store.db.Database` (opening, its error rules, reads and writes) is the
only host of this block; it lives apart so the schema rules can be read on their own.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import re
import sqlite3
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from guardian.store.errors import StoreDamaged, StoreError, StoreNewer, classify

log = logging.getLogger("guardian.db")

T = TypeVar("T")

_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")


@dataclass(frozen=True)
class Component:
    """One user of the file: a name and its migrations (index i upgrades i -> i + 1).

    Never edit a shipped migration; append. ``legacy_version`` reads the version of a file
    written before ``guardian_schema`` knew this component (0 when it has none).
    ``mirror_user_version`` (the incident store only) keeps ``PRAGMA user_version`` equal
    to the component's version, so a Guardian from before this module still recognises a
    file it can use, and refuses one that is newer than it knows.
    """

    name: str
    migrations: tuple[str, ...]
    legacy_version: Callable[[sqlite3.Connection], int] | None = None
    mirror_user_version: bool = False

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ValueError(f"component name {self.name!r} must match {_NAME.pattern}")

    @property
    def version(self) -> int:
        return len(self.migrations)


ResetHook = Callable[[], None]


class ComponentHost(ABC):
    """Registration, migration and reset of components, for the Database that hosts them.

    Every method here runs under the host's ``lock`` (``register`` takes it; the others
    are called with it held).
    """

    path: Path
    recover: bool
    lock: threading.RLock
    _conn: sqlite3.Connection
    _components: dict[str, tuple[Component, ResetHook | None]]
    _generation: int
    _resetting: bool

    @abstractmethod
    def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` (queries only) under the lock with the error rules."""

    @abstractmethod
    def _memory(self) -> sqlite3.Connection:
        """A fresh in-memory connection, verified."""

    @abstractmethod
    def _replace_damaged(self, error: str) -> sqlite3.Connection:
        """Move the damaged file aside and open a fresh one (memory if that fails)."""

    @abstractmethod
    def _set_sticky(self, key: str, message: str) -> None:
        """Record a problem that stays for the run."""

    def register(self, component: Component, on_reset: ResetHook | None = None) -> None:
        """Add a component and bring its tables up to date.

        ``on_reset`` is called after the file was replaced (damage found mid-run, or a
        refused schema), so the component can write back what it keeps in memory.
        """
        with self.lock:
            self._components[component.name] = (component, on_reset)
            try:
                self._migrate(self._conn, component)
            except StoreNewer as e:
                if not self.recover:
                    raise
                self._refuse(str(e))
            except sqlite3.Error as e:
                if classify(e) != "damaged":
                    raise StoreError(f"migrating {component.name} in {self.path}: {e}") from e
                if not self.recover:
                    raise StoreDamaged(f"store {self.path} is damaged: {e}") from e
                self._reset(functools.partial(self._replace_damaged, str(e)))

    def version(self, component: str) -> int:
        """The version recorded for ``component`` (0 when it has no row)."""
        row = self.read(
            lambda c: c.execute(
                "SELECT version FROM guardian_schema WHERE component = ?", (component,)
            ).fetchone()
        )
        return 0 if row is None else int(row[0])

    @staticmethod
    def _recorded(conn: sqlite3.Connection, comp: Component) -> tuple[bool, int]:
        """(has a guardian_schema row, version) without writing anything."""
        has_table = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'guardian_schema'"
        ).fetchone()
        row = None
        if has_table:
            row = conn.execute(
                "SELECT version FROM guardian_schema WHERE component = ?", (comp.name,)
            ).fetchone()
        if row is not None:
            return True, int(row[0])
        return False, comp.legacy_version(conn) if comp.legacy_version is not None else 0

    def _check_not_newer(
        self, conn: sqlite3.Connection, comp: Component, recorded: tuple[bool, int]
    ) -> None:
        version = recorded[1]
        if version > comp.version:
            raise StoreNewer(
                f"store {self.path}: {comp.name} tables are at schema v{version}, newer than"
                f" this Guardian (v{comp.version}); upgrade Guardian or use another store path"
            )

    def _migrate(self, conn: sqlite3.Connection, comp: Component) -> None:
        recorded, version = self._recorded(conn, comp)
        self._check_not_newer(conn, comp, (recorded, version))
        record = (
            "INSERT INTO guardian_schema (component, version)"
            " VALUES ('{name}', {v}) ON CONFLICT(component) DO UPDATE SET version ="
            " excluded.version;"
        )

        def bump(v: int) -> str:
            mirror = f"\nPRAGMA user_version = {v};" if comp.mirror_user_version else ""
            return record.format(name=comp.name, v=v) + mirror

        try:
            if not recorded and version > 0:  # adopt a legacy version as it is
                conn.executescript(f"BEGIN IMMEDIATE;\n{bump(version)}\nCOMMIT;")
            for i in range(version, comp.version):
                # executescript commits on its own: migration and version bump in one script.
                conn.executescript(
                    f"BEGIN IMMEDIATE;\n{comp.migrations[i]}\n{bump(i + 1)}\nCOMMIT;"
                )
        except BaseException:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            raise

    def _refuse(self, why: str) -> None:
        self._refused(why)
        self._reset(self._memory)

    def _refused(self, why: str) -> None:
        msg = f"{why}; the file is kept as it is and Guardian runs on an in-memory store"
        log.error(msg, extra={"event": "store_refused", "path": str(self.path)})
        self._set_sticky("refused", msg)

    def _reset(self, reopen: Callable[[], sqlite3.Connection]) -> None:
        """Swap the connection for ``reopen()``, migrate every component, call their hooks.

        Not re-entered: damage found while the hooks re-save is an error of that save,
        not a second replacement (a fresh file that is damaged at once would loop).
        """
        self._resetting = True
        try:
            self._reset_now(reopen)
        finally:
            self._resetting = False

    def _reset_now(self, reopen: Callable[[], sqlite3.Connection]) -> None:
        with contextlib.suppress(sqlite3.Error):
            self._conn.close()
        self._generation += 1
        self._conn = reopen()
        for comp, _ in list(self._components.values()):
            try:
                self._migrate(self._conn, comp)
            except (sqlite3.Error, StoreNewer) as e:
                log.error("migrating %s on the fresh store failed: %s", comp.name, e)
                with contextlib.suppress(sqlite3.Error):
                    self._conn.close()
                self._conn = self._memory()
                for c, _ in self._components.values():
                    self._migrate(self._conn, c)
                break
        for comp, hook in list(self._components.values()):
            if hook is None:
                continue
            try:
                hook()
            except Exception:
                log.exception("re-saving %s into the fresh store failed", comp.name)
