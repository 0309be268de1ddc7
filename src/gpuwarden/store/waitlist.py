"""The queue of loads waiting for busy GPUs, as the state database keeps it (see :mod:`gpuwarden.waitlist`).

Entries are kept after they end (started, expired, withdrawn, failed), so whoever waits (the CLI's
``load --wait``) learns how; ended entries older than :data:`ENDED_KEPT_DAYS` are pruned. The file
is untrusted: a row that does not decode is reported, never trusted.
"""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime, timedelta

from gpuwarden.store.base import StoreError, TxCore, iso, parse_time, text_or_none
from gpuwarden.waitlist import WaitEntry, WaitState

ENDED_KEPT_DAYS = 7
MAX_ROW_ID = 2**63 - 1
MAX_DETAIL_CHARS = 500


def _entry(row: sqlite3.Row) -> WaitEntry:
    try:
        indexes = json.loads(row["gpu_indexes"])
        if (not isinstance(indexes, list) or not indexes
                or not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < 4096 for i in indexes)):
            raise ValueError("gpu_indexes")
        requested_at, expires_at = parse_time(row["requested_at"]), parse_time(row["expires_at"])
        if requested_at is None or expires_at is None or not isinstance(row["model_name"], str):
            raise ValueError("requested_at/expires_at/model_name")
        return WaitEntry(id=int(row["id"]), model_name=row["model_name"], gpu_indexes=tuple(indexes),
                         owner=text_or_none(row["owner"]), client=text_or_none(row["client"]),
                         requested_at=requested_at, expires_at=expires_at, state=WaitState(row["state"]),
                         ended_at=parse_time(row["ended_at"]), detail=text_or_none(row["detail"]))
    except (ValueError, TypeError, KeyError, IndexError) as error:
        raise StoreError(f"state database queue row {row['id']!r} is damaged ({error}); "
                         "remove or repair the database to continue") from None


class WaitlistTx(TxCore):
    """Queued loads: join, look, end."""

    def waiting_entries(self) -> list[WaitEntry]:
        """Every waiting load, first come first."""
        rows = self._execute("SELECT * FROM waitlist WHERE state = ? ORDER BY id", (WaitState.WAITING.value,))
        return [_entry(row) for row in rows.fetchall()]

    def wait_entry(self, entry_id: int) -> WaitEntry | None:
        if not 1 <= entry_id <= MAX_ROW_ID:  # an id from a request: SQLite's integers end there
            return None
        row = self._execute("SELECT * FROM waitlist WHERE id = ?", (entry_id,)).fetchone()
        return _entry(row) if row is not None else None

    def add_wait(self, *, model_name: str, gpu_indexes: tuple[int, ...], owner: str | None, client: str | None,
                 requested_at: datetime, expires_at: datetime) -> WaitEntry:
        cursor = self._execute(
            "INSERT INTO waitlist (model_name, gpu_indexes, owner, client, requested_at, expires_at, state)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (model_name, json.dumps(list(gpu_indexes)), owner, client, iso(requested_at), iso(expires_at),
             WaitState.WAITING.value))
        self._bump_generation()
        return WaitEntry(int(cursor.lastrowid or 0), model_name, gpu_indexes, owner, client, requested_at,
                         expires_at)

    def withdraw_waits_of(self, owner: str, *, at: datetime, detail: str) -> int:
        """End every waiting load of ``owner`` (an account removed); how many."""
        cursor = self._execute("UPDATE waitlist SET state = ?, ended_at = ?, detail = ? WHERE owner = ? AND state = ?",
                               (WaitState.WITHDRAWN.value, iso(at), detail, owner, WaitState.WAITING.value))
        self._bump_generation()
        return cursor.rowcount

    def end_wait(self, entry_id: int, state: WaitState, *, at: datetime, detail: str | None,
                 from_state: WaitState = WaitState.WAITING) -> bool:
        """End an entry still in ``from_state`` (waiting; or started, for a start whose launch
        failed); False if it was not (another process ended it first)."""
        cursor = self._execute(
            "UPDATE waitlist SET state = ?, ended_at = ?, detail = ? WHERE id = ? AND state = ?",
            (state.value, iso(at), detail[:MAX_DETAIL_CHARS] if detail else None, entry_id, from_state.value))
        self._bump_generation()
        self._execute("DELETE FROM waitlist WHERE state != ? AND ended_at < ?",
                      (WaitState.WAITING.value, iso(at - timedelta(days=ENDED_KEPT_DAYS))))
        return cursor.rowcount == 1
