"""The incident tables' schema: ordered migrations, registered as a component of guardian.db.

A component of the one file :mod:`guardian.store.db` owns (its migrations are versioned in
``guardian_schema``; files written before that kept the version in ``PRAGMA
user_version``, which is adopted once and from then on only mirrored, for older Guardians).
"""

from __future__ import annotations

import sqlite3

from guardian.store.db import Component

# Ordered migrations: index i upgrades version i -> i+1. Never edit a shipped entry;
# append a new one.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE incidents (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        target TEXT NOT NULL,
        opened_at TEXT NOT NULL,
        escalated_at TEXT,
        resolved_at TEXT,
        severity TEXT NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('open', 'escalated', 'resolved')),
        summary TEXT NOT NULL DEFAULT '',
        failure_count INTEGER NOT NULL DEFAULT 0,
        flap_count INTEGER NOT NULL DEFAULT 0,
        report_path TEXT
    );
    CREATE INDEX incidents_status ON incidents(status, target);
    CREATE INDEX incidents_opened ON incidents(opened_at);
    CREATE TABLE results (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        incident_id INTEGER REFERENCES incidents(id) ON DELETE SET NULL,
        target TEXT NOT NULL,
        check_name TEXT NOT NULL,
        kind TEXT NOT NULL,
        status TEXT NOT NULL,
        reason TEXT NOT NULL,
        vals TEXT NOT NULL,
        started TEXT NOT NULL,
        finished TEXT NOT NULL,
        duration REAL NOT NULL
    );
    CREATE INDEX results_incident ON results(incident_id);
    CREATE INDEX results_finished ON results(finished);
    CREATE INDEX results_key ON results(target, check_name, id);
    CREATE TABLE recovery (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        incident_id INTEGER REFERENCES incidents(id) ON DELETE SET NULL,
        target TEXT NOT NULL,
        kind TEXT NOT NULL,
        time TEXT NOT NULL,
        attempt INTEGER NOT NULL,
        reason TEXT NOT NULL,
        detail TEXT NOT NULL,
        vals TEXT NOT NULL
    );
    CREATE INDEX recovery_incident ON recovery(incident_id);
    CREATE INDEX recovery_time ON recovery(time);
    CREATE TABLE notifications (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        incident_id INTEGER REFERENCES incidents(id) ON DELETE SET NULL,
        target TEXT NOT NULL,
        channel TEXT NOT NULL,
        transition TEXT NOT NULL,
        time TEXT NOT NULL,
        ok INTEGER NOT NULL,
        error TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX notifications_incident ON notifications(incident_id, transition);
    CREATE INDEX notifications_time ON notifications(time);
    """,
    # v2: what the report needs that must outlive the process: the log tail and system
    # snapshot captured at escalation.
    """
    CREATE TABLE artifacts (
        incident_id INTEGER NOT NULL REFERENCES incidents(id) ON DELETE CASCADE,
        name TEXT NOT NULL,
        captured_at TEXT NOT NULL,
        body TEXT NOT NULL,
        PRIMARY KEY (incident_id, name)
    );
    """,
    # v3: the incident timeline (every incident the status page shows, one query) reads
    # an incident's recovery events in time order straight from an index; linking a
    # target's recent unlinked events to a new incident reads only those (a partial index),
    # not every event no incident ever claimed.
    """
    DROP INDEX IF EXISTS recovery_incident;
    CREATE INDEX recovery_timeline ON recovery(incident_id, time);
    CREATE INDEX recovery_unlinked ON recovery(target, time) WHERE incident_id IS NULL;
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)


def _legacy_version(conn: sqlite3.Connection) -> int:
    """Files written before guardian_schema kept the incident version in user_version."""
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


INCIDENTS = Component(
    "incidents", MIGRATIONS, legacy_version=_legacy_version, mirror_user_version=True
)
