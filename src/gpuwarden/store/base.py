"""What every part of the store shares: its error, time encoding, and the transaction's core."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from typing import Any


class StoreError(Exception):
    """The state database cannot be used (corrupt, locked, unwritable); the message says which."""


def iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(UTC).isoformat()


def parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def text_or_none(value: Any) -> str | None:
    """A text column of an untrusted row: anything else is None."""
    return value if isinstance(value, str) else None


class TxCore:
    """One transaction's connection; the mixins of :class:`gpuwarden.store.StoreTx` build on it."""

    def __init__(self, connection: sqlite3.Connection) -> None:
        self._db = connection
        self.own_steps: list[tuple[int, int]] = []  # (generation before, after) of each bump made here

    def _execute(self, sql: str, parameters: tuple[Any, ...] = ()) -> sqlite3.Cursor:
        try:
            return self._db.execute(sql, parameters)
        except sqlite3.Error as error:
            raise StoreError(f"state database error: {error}") from None

    def generation(self) -> int:
        """Bumped by every change that others must notice (placements, settings)."""
        row = self._execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()
        try:
            return int(row["value"]) if row else 0
        except (TypeError, ValueError):
            return 0

    def _bump_generation(self) -> None:
        before = self.generation()
        self._execute(
            "INSERT INTO meta (key, value) VALUES ('generation', '1')"
            " ON CONFLICT(key) DO UPDATE SET value = CAST(value AS INTEGER) + 1")
        self.own_steps.append((before, self.generation()))
