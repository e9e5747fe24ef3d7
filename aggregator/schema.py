"""The aggregator database's schema, version by version (SQLite).

:data:`SCHEMA` creates the current tables; :data:`MIGRATIONS` maps a version to the statements
that bring a database of that version to the next one. :class:`aggregator.store.Store` applies
them when it opens a file.
"""

from __future__ import annotations

__all__ = ["MIGRATIONS", "SCHEMA", "SCHEMA_VERSION"]

SCHEMA_VERSION = 2

SCHEMA = """
CREATE TABLE IF NOT EXISTS sites (
    site_id TEXT PRIMARY KEY,
    software_version TEXT NOT NULL DEFAULT '',
    ingested_at TEXT NOT NULL DEFAULT '',
    last_seen REAL NOT NULL,
    connected INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS studies (
    study_id TEXT PRIMARY KEY,
    canonical_study BLOB NOT NULL,
    signature BLOB NOT NULL,
    public_key BLOB NOT NULL,
    title TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('running', 'completed', 'failed')),
    submitted_at REAL NOT NULL,
    completed_at REAL,
    results_json TEXT
);
CREATE TABLE IF NOT EXISTS study_sites (
    study_id TEXT NOT NULL REFERENCES studies(study_id),
    site_id TEXT NOT NULL,
    state TEXT NOT NULL
        CHECK (state IN ('pending', 'sent', 'released', 'refused', 'unreachable')),
    reason TEXT NOT NULL DEFAULT '',
    updated_at REAL NOT NULL,
    task_id TEXT NOT NULL UNIQUE,
    PRIMARY KEY (study_id, site_id)
);
CREATE TABLE IF NOT EXISTS iterations (
    study_id TEXT PRIMARY KEY REFERENCES studies(study_id),
    round INTEGER NOT NULL,
    round_started_at REAL NOT NULL,
    state_json TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS round_tasks (
    study_id TEXT NOT NULL REFERENCES studies(study_id),
    round INTEGER NOT NULL,
    site_id TEXT NOT NULL,
    task_id TEXT NOT NULL UNIQUE,
    state TEXT NOT NULL CHECK (state IN ('pending', 'sent', 'answered', 'refused', 'silent')),
    reason TEXT NOT NULL DEFAULT '',
    updated_at REAL NOT NULL,
    result BLOB,
    PRIMARY KEY (study_id, round, site_id)
);
"""

MIGRATIONS: dict[int, list[str]] = {
    # version 1 -> 2: sites no longer report their size; releases live in round_tasks only;
    # run states changed shape, so studies running under version 1 cannot resume
    1: ["ALTER TABLE sites DROP COLUMN stored_infusions",
        "ALTER TABLE study_sites DROP COLUMN release",
        "DROP TABLE round_tasks",
        "DROP TABLE iterations",
        "UPDATE studies SET status='failed', results_json='{\"heron\": 1, \"status\": "
        "\"failed\", \"error\": \"the aggregator was upgraded while the study ran; "
        "submit it again\"}' WHERE status='running'"],
}
