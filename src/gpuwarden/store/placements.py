"""Placements (where each model runs, which process, how it ended) and the run-time settings.

The file is untrusted: rows that do not decode are reported, never trusted.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from gpuwarden.records import ACTIVE_MODEL_STATES, ModelState, PlacementRecord
from gpuwarden.store.base import StoreError, TxCore, iso, parse_time, text_or_none

ACTIVE_STATES: tuple[str, ...] = tuple(state.value for state in ACTIVE_MODEL_STATES)
RECORDED_STATES = frozenset(state for state in ModelState if state is not ModelState.NOT_LOADED)
_ACTIVE_SQL = "(" + ", ".join("?" for _ in ACTIVE_STATES) + ")"


def _record(row: sqlite3.Row) -> PlacementRecord:
    """Decode one row; the database is untrusted, so every field is checked."""
    try:
        indexes = json.loads(row["gpu_indexes"])
        uuids = json.loads(row["gpu_uuids"])
        if not isinstance(indexes, list) or not all(isinstance(i, int) and 0 <= i < 4096 for i in indexes):
            raise ValueError("gpu_indexes")
        if not isinstance(uuids, list) or not all(u is None or isinstance(u, str) for u in uuids):
            raise ValueError("gpu_uuids")
        started_at = parse_time(row["started_at"])
        state = ModelState(row["state"]) if isinstance(row["state"], str) else None
        if started_at is None or state not in RECORDED_STATES:
            raise ValueError("started_at/state")
        pid = row["pid"]
        if pid is not None and (not isinstance(pid, int) or pid <= 0):
            raise ValueError("pid")
        return PlacementRecord(
            id=int(row["id"]),
            model_name=str(row["model_name"]),
            gpu_indexes=tuple(indexes),
            gpu_uuids=tuple(uuids),
            pid=pid,
            process_start_time=float(row["process_start_time"]) if row["process_start_time"] is not None else None,
            port=row["port"] if isinstance(row["port"], int) else None,
            started_at=started_at,
            owner=text_or_none(row["owner"]),
            state=state,
            ended_at=parse_time(row["ended_at"]),
            exit_code=row["exit_code"] if isinstance(row["exit_code"], int) else None,
            error=row["error"] if isinstance(row["error"], str) else None,
            log_path=row["log_path"] if isinstance(row["log_path"], str) else None,
            log_tail=row["log_tail"] if isinstance(row["log_tail"], str) else None,
        )
    except (ValueError, TypeError, KeyError, IndexError) as error:
        raise StoreError(f"state database row {row['id']!r} is damaged ({error}); "
                         "remove or repair the database to continue") from None


class PlacementsTx(TxCore):
    """Placements (where models run) and the run-time settings."""

    def active_placements(self) -> list[PlacementRecord]:
        rows = self._execute(
            f"SELECT * FROM placements WHERE state IN {_ACTIVE_SQL} ORDER BY id",  # noqa: S608 - constant
            ACTIVE_STATES).fetchall()
        return [_record(row) for row in rows]

    def latest_placements(self) -> dict[str, PlacementRecord]:
        """The newest placement of every model that was ever loaded."""
        rows = self._execute(
            "SELECT * FROM placements WHERE id IN (SELECT MAX(id) FROM placements GROUP BY model_name)").fetchall()
        return {record.model_name: record for record in map(_record, rows)}

    def insert_placement(
        self, *, model_name: str, gpu_indexes: tuple[int, ...], gpu_uuids: tuple[str | None, ...],
        pid: int | None, process_start_time: float | None, port: int | None, started_at: datetime,
        owner: str | None, log_path: str,
    ) -> int:
        """A new placement in ``starting``. With ``pid`` None it is a reservation: its GPUs are taken
        before the model is launched, and :meth:`attach_process` records the process afterwards."""
        cursor = self._execute(
            "INSERT INTO placements (model_name, gpu_indexes, gpu_uuids, pid, process_start_time, port,"
            " started_at, owner, state, log_path) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (model_name, json.dumps(list(gpu_indexes)), json.dumps(list(gpu_uuids)), pid, process_start_time,
             port, iso(started_at), owner, ModelState.STARTING.value, log_path))
        self._bump_generation()
        return int(cursor.lastrowid or 0)

    def attach_process(self, placement_id: int, *, pid: int, process_start_time: float) -> bool:
        """Record the launched process of a reservation. False if the reservation is no longer
        waiting for it (unloaded or given up meanwhile): the caller must stop what it launched."""
        cursor = self._execute(
            "UPDATE placements SET pid = ?, process_start_time = ? WHERE id = ? AND state = ? AND pid IS NULL",
            (pid, process_start_time, placement_id, ModelState.STARTING.value))
        self._bump_generation()
        return cursor.rowcount == 1

    def delete_reservation(self, placement_id: int) -> None:
        """Forget a reservation whose launch failed (nothing ran)."""
        self._execute("DELETE FROM placements WHERE id = ? AND pid IS NULL", (placement_id,))
        self._bump_generation()

    def finish_placement(self, placement_id: int, *, state: ModelState, ended_at: datetime, exit_code: int | None,
                         error: str | None, log_tail: str | None) -> None:
        """End an active placement."""
        self._finish(placement_id, (state.value, iso(ended_at), exit_code, error, log_tail), "", ())

    def finish_if_unchanged(self, placement_id: int, observed_pid: int | None, *, state: ModelState,
                            ended_at: datetime, exit_code: int | None, error: str | None, log_tail: str | None) -> None:
        """Supervision's compare-and-set: end the placement only if its process is still the one
        observed, so a loader that recorded its process meanwhile wins."""
        self._finish(placement_id, (state.value, iso(ended_at), exit_code, error, log_tail), " AND pid IS ?",
                     (observed_pid,))

    def _finish(self, placement_id: int, values: tuple[Any, ...], check: str, check_values: tuple[Any, ...]) -> None:
        self._execute(
            "UPDATE placements SET state = ?, ended_at = ?, exit_code = ?, error = ?, log_tail = ?"  # noqa: S608
            f" WHERE id = ? AND state IN {_ACTIVE_SQL}{check}",
            (*values, placement_id, *ACTIVE_STATES, *check_values))
        self._bump_generation()

    def set_state(self, placement_id: int, state: ModelState) -> None:
        """Move an active placement to another active state (``stopping``)."""
        self._execute(f"UPDATE placements SET state = ? WHERE id = ? AND state IN {_ACTIVE_SQL}",  # noqa: S608
                      (state.value, placement_id, *ACTIVE_STATES))
        self._bump_generation()

    def mark_running(self, placement_id: int) -> None:
        self._execute("UPDATE placements SET state = ? WHERE id = ? AND state = ?",
                      (ModelState.RUNNING.value, placement_id, ModelState.STARTING.value))
        self._bump_generation()

    def settings(self) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for row in self._execute("SELECT key, value FROM settings").fetchall():
            try:
                result[str(row["key"])] = json.loads(row["value"])
            except (ValueError, TypeError):
                raise StoreError(f"state database setting {row['key']!r} is damaged") from None
        return result

    def save_settings(self, values: Mapping[str, object]) -> None:
        for key, value in values.items():
            self._execute("INSERT INTO settings (key, value) VALUES (?, ?)"
                          " ON CONFLICT(key) DO UPDATE SET value = excluded.value", (key, json.dumps(value)))
        self._bump_generation()
