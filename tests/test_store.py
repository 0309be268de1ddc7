"""The state database seen from outside: a newer schema is refused and left untouched, settings
another process saved reach the server at its next reconcile, and saved values are untrusted."""

from __future__ import annotations

import json
import os
import sqlite3
import sys
import threading
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
import pytest

from gpuwarden.controller import Controller
from gpuwarden.errors import StateUnavailable
from gpuwarden.probe.mock import MockSource
from gpuwarden.process.fake import FakeProcessHost
from gpuwarden.records import GpuState
from gpuwarden.store import SCHEMA_VERSION, Store, StoreError
from tests.conftest import make_settings

GPUS = "0, 1 MiB\n1, 100 MiB\n"
NOW = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)


def clock() -> datetime:
    return NOW


def controller_on(state_dir: Path, **overrides: Any) -> Controller:
    settings = make_settings(state_dir, **overrides)
    return Controller(settings, MockSource(text=GPUS, clock=clock), Store(state_dir / "gpuwarden.db"),
                      FakeProcessHost(state_dir / "logs"), clock=clock)


def create_database(path: Path) -> None:
    with Store(path).read() as tx:
        assert tx.active_placements() == []


def write_sql(path: Path, sql: str, parameters: tuple[Any, ...] = ()) -> None:
    with closing(sqlite3.connect(path)) as db, db:
        db.execute(sql, parameters)


def test_newer_schema_is_refused_and_left_untouched(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    path = state_dir / "gpuwarden.db"
    create_database(path)
    write_sql(path, "UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    before = path.read_bytes()

    with pytest.raises(StoreError) as raised, Store(path).read():
        pass
    message = str(raised.value)
    assert "'99'" in message and f"knows {SCHEMA_VERSION}" in message and str(path) in message
    if sys.platform != "win32":  # the refused database is closed at once, not when the error is collected
        assert str(path) not in [f.path for f in psutil.Process().open_files()]
    del raised

    controller = controller_on(state_dir)
    with pytest.raises(StateUnavailable, match="schema version '99'"):
        controller.models()
    document = controller.status()
    assert [(g.index, g.state) for g in document.gpus] == [(0, GpuState.IDLE), (1, GpuState.OCCUPIED_BY_OTHERS)]
    assert len(document.warnings) == 1
    assert "placements unknown" in document.warnings[0] and "'99'" in document.warnings[0]
    assert controller.reconcile() is False
    assert path.read_bytes() == before
    assert sorted(p.name for p in state_dir.iterdir()) == ["gpuwarden.db"]  # no journal, no new file


def test_settings_saved_by_another_process_reach_the_server(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    server = controller_on(state_dir)
    assert server.reconcile() is False  # the server's first pass: nothing changed yet
    assert server.status().gpu(1).state is GpuState.OCCUPIED_BY_OTHERS  # type: ignore[union-attr]
    version = server.changes.version

    cli = controller_on(state_dir)  # e.g. a second gpuwarden process on the same state dir
    cli.update_settings({"memory_threshold_mib": 500})
    assert cli.runtime.memory_threshold_mib == 500
    assert server.runtime.memory_threshold_mib == 30  # not before the server's next reconcile

    assert server.reconcile() is True
    assert server.runtime.memory_threshold_mib == 500
    assert server.runtime.refresh_interval_seconds == 300
    assert server.changes.version > version
    assert [g.state for g in server.status().gpus] == [GpuState.IDLE, GpuState.IDLE]
    assert server.reconcile() is False  # seen once, not news again


def test_out_of_range_saved_settings_are_ignored_at_startup(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    path = state_dir / "gpuwarden.db"
    create_database(path)
    for key, value in (("memory_threshold_mib", 10**9), ("refresh_interval_seconds", 60), ("unknown_key", 5)):
        write_sql(path, "INSERT INTO settings (key, value) VALUES (?, ?)", (key, json.dumps(value)))
    controller = controller_on(state_dir, memory_threshold_mib=45)
    assert controller.runtime.to_dict() == {"memory_threshold_mib": 45, "refresh_interval_seconds": 60}

    for bad in (-1, True, "50", 1.5, None):
        write_sql(path, "UPDATE settings SET value = ? WHERE key = 'memory_threshold_mib'", (json.dumps(bad),))
        assert controller_on(state_dir, memory_threshold_mib=45).runtime.memory_threshold_mib == 45, bad
    write_sql(path, "UPDATE settings SET value = ? WHERE key = 'memory_threshold_mib'", (json.dumps(70),))
    assert controller_on(state_dir, memory_threshold_mib=45).runtime.memory_threshold_mib == 70


VERSION_1_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE placements (
    id INTEGER PRIMARY KEY AUTOINCREMENT, model_name TEXT NOT NULL, gpu_indexes TEXT NOT NULL,
    gpu_uuids TEXT NOT NULL, pid INTEGER, process_start_time REAL, port INTEGER, started_at TEXT NOT NULL,
    requested_by TEXT, state TEXT NOT NULL, ended_at TEXT, exit_code INTEGER, error TEXT, log_path TEXT,
    log_tail TEXT);
CREATE INDEX placements_by_model ON placements (model_name, id);
CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT INTO placements (model_name, gpu_indexes, gpu_uuids, started_at, requested_by, state)
    VALUES ('alpha', '[0]', '[null]', '2026-11-01T10:00:00+00:00', 'alice (127.0.0.1)', 'stopped');
"""


@pytest.mark.parametrize("recorded_version", [True, False], ids=["version-1", "no-version-row"])
def test_a_version_1_database_is_upgraded_in_place(tmp_path: Path, recorded_version: bool) -> None:
    path = tmp_path / "gpuwarden.db"
    with closing(sqlite3.connect(path)) as db, db:
        db.executescript(VERSION_1_SCHEMA + ("INSERT INTO meta VALUES ('schema_version', '1');"
                                             if recorded_version else ""))
    with Store(path).read() as tx:
        (record,) = tx.latest_placements().values()
        assert (record.model_name, record.owner) == ("alpha", "alice (127.0.0.1)")  # kept, as an owner now
        assert tx.users() == [] and tx.audit(10) == [] and tx.waiting_entries() == []
    with closing(sqlite3.connect(path)) as db:
        assert db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == (str(SCHEMA_VERSION),)
    with Store(path).read() as tx:  # opening it again changes nothing
        assert len(tx.latest_placements()) == 1


@pytest.mark.skipif(sys.platform == "win32", reason="Windows cannot replace a file that is open")
def test_a_replaced_database_file_is_followed(tmp_path: Path) -> None:
    """Someone moves a database aside and puts another in its place while the server runs: the
    store's kept connections let the old file go, and reads, writes and data_version follow the new."""
    path = tmp_path / "state" / "gpuwarden.db"
    store = Store(path)
    with store.exclusive() as tx:
        tx.save_settings({"memory_threshold_mib": 40})
    version = store.data_version()
    other = tmp_path / "other.db"
    with Store(other).exclusive() as tx:
        tx.save_settings({"memory_threshold_mib": 70})
    os.replace(other, path)
    with store.read() as tx:
        assert tx.settings()["memory_threshold_mib"] == 70
    with store.exclusive() as tx:  # a write lands in the new file (the old one's connection is gone)
        tx.save_settings({"memory_threshold_mib": 80})
    with Store(path).read() as tx:
        assert tx.settings()["memory_threshold_mib"] == 80
    moved = store.data_version()
    with Store(path).exclusive() as tx:  # the CLI, on the new file
        tx.save_settings({"memory_threshold_mib": 90})
    assert len({version, moved, store.data_version()}) == 3
    assert path.resolve() in {Path(f.path).resolve() for f in psutil.Process().open_files()}
    store.close()
    assert path.resolve() not in {Path(f.path).resolve() for f in psutil.Process().open_files()}


def test_close_leaves_a_transaction_under_way_to_finish(tmp_path: Path) -> None:
    store = Store(tmp_path / "state" / "gpuwarden.db")
    inside, closed = threading.Event(), threading.Event()
    seen: list[object] = []

    def reader() -> None:
        with store.read() as tx:
            inside.set()
            closed.wait(10)
            seen.append(tx.settings())  # its connection was not closed under it
        with store.read() as tx:  # and the thread opens a new one afterwards
            seen.append(tx.generation())

    thread = threading.Thread(target=reader)
    thread.start()
    assert inside.wait(10)
    store.close()
    closed.set()
    thread.join(10)
    assert seen == [{}, 0]
