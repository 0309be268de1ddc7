"""The state database's schema, and the steps that bring an older database up to it.

A database of a newer version is refused and left untouched; an older one is upgraded in place,
inside one exclusive transaction, so two processes starting together cannot both upgrade it.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from gpuwarden.store.base import StoreError

SCHEMA_VERSION = 3
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS placements (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    model_name TEXT NOT NULL,
    gpu_indexes TEXT NOT NULL,          -- JSON list of ints, [] for CPU
    gpu_uuids TEXT NOT NULL,            -- JSON list of str|null
    pid INTEGER,
    process_start_time REAL,
    port INTEGER,
    started_at TEXT NOT NULL,
    owner TEXT,                         -- the account (or OS account, from the CLI) that loaded it
    state TEXT NOT NULL,                -- starting | running | stopping | stopped | failed
    ended_at TEXT,
    exit_code INTEGER,
    error TEXT,
    log_path TEXT,
    log_tail TEXT
);
CREATE INDEX IF NOT EXISTS placements_by_model ON placements (model_name, id);
CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
""" + """
CREATE TABLE IF NOT EXISTS users (
    name TEXT PRIMARY KEY,
    password_hash TEXT NOT NULL,        -- argon2id
    admin INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS api_tokens (
    digest TEXT PRIMARY KEY,            -- SHA-256 of the token (the token itself is shown once, never kept)
    user_name TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS sessions (
    digest TEXT PRIMARY KEY,            -- SHA-256 of the session id in the (signed) cookie
    user_name TEXT NOT NULL,
    client TEXT NOT NULL,               -- the address it was opened from: used from no other
    created_at TEXT NOT NULL,
    expires_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at TEXT NOT NULL,
    user_name TEXT,
    client TEXT,
    action TEXT NOT NULL,
    model TEXT,
    gpus TEXT,                          -- JSON list of ints, [] for CPU, NULL when no GPU is concerned
    result TEXT NOT NULL,
    detail TEXT
);
CREATE INDEX IF NOT EXISTS audit_by_time ON audit (at);
""" + """
CREATE TABLE IF NOT EXISTS waitlist (
    id INTEGER PRIMARY KEY AUTOINCREMENT,  -- the order of the lines: first come, first served
    model_name TEXT NOT NULL,
    gpu_indexes TEXT NOT NULL,          -- JSON list of ints, never empty (the CPU is never busy)
    owner TEXT,
    client TEXT,
    requested_at TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    state TEXT NOT NULL,                -- waiting | started | expired | withdrawn | failed
    ended_at TEXT,
    detail TEXT
);
CREATE INDEX IF NOT EXISTS waitlist_by_state ON waitlist (state, id);
"""
# Version N -> N + 1, run before SCHEMA (whose CREATE ... IF NOT EXISTS adds the new tables).
UPGRADES: dict[int, tuple[str, ...]] = {
    # 1 -> 2: a placement's free-text "requested_by" becomes its owner. Old values were whatever a
    # client typed, so with accounts only an admin can unload such a placement.
    1: ("ALTER TABLE placements RENAME COLUMN requested_by TO owner",),
    2: (),  # 2 -> 3: the waitlist (a new table)
}


def _statements(script: str) -> list[str]:
    return [statement.strip() for statement in script.split(";") if statement.strip()]


def prepare(connection: sqlite3.Connection, path: Path) -> None:
    """Create or upgrade the schema, in one exclusive transaction (``connection`` in autocommit mode)."""
    connection.execute("BEGIN IMMEDIATE")
    try:
        connection.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        row = connection.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        version = _version(row["value"] if row is not None else None, path)
        if version is None and connection.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'placements'").fetchone():
            version = 1  # a database written before the version was recorded
        while version is not None and version < SCHEMA_VERSION:
            for statement in UPGRADES[version]:
                connection.execute(statement)
            version += 1
        for statement in _statements(SCHEMA):
            connection.execute(statement)
        connection.execute("INSERT INTO meta (key, value) VALUES ('schema_version', ?)"
                           " ON CONFLICT(key) DO UPDATE SET value = excluded.value", (str(SCHEMA_VERSION),))
        connection.execute("COMMIT")
    except BaseException:
        if connection.in_transaction:
            connection.execute("ROLLBACK")
        raise


def _version(value: object, path: Path) -> int | None:
    if value is None:
        return None
    text = str(value)
    if not text.isdigit() or not 1 <= int(text) <= SCHEMA_VERSION:
        raise StoreError(f"state database {path} has schema version {text[:20]!r}, this gpuwarden knows"
                         f" {SCHEMA_VERSION}: it was left untouched (a newer gpuwarden wrote it?)")
    return int(text)
