"""The queue's pure rules (gpuwarden.waitlist: lines per GPU, positions, promises, durations) and
how the state database keeps it (gpuwarden.store.waitlist: untrusted rows, compare-and-set ends,
the upgrade that brings the table)."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gpuwarden.store import SCHEMA_VERSION, Store, StoreError
from gpuwarden.waitlist import (
    MAX_WAIT_SECONDS,
    WaitEntry,
    WaitState,
    ahead_of,
    claims,
    parse_duration_seconds,
    position,
    positions,
)

T0 = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)


def entry(entry_id: int, *gpus: int, state: WaitState = WaitState.WAITING) -> WaitEntry:
    return WaitEntry(entry_id, f"m{entry_id}", gpus, "alice", "cli", T0, T0 + timedelta(hours=1), state)


def test_lines_are_per_gpu_first_come_first_served() -> None:
    waiting = [entry(1, 0, 1), entry(2, 1), entry(3, 2), entry(4, 0), entry(5, 1, state=WaitState.STARTED)]
    assert positions(waiting) == {1: 1, 2: 2, 3: 1, 4: 2}
    assert ahead_of(waiting[1], waiting) == [waiting[0]]
    assert claims(waiting) == {0: waiting[0], 1: waiting[0], 2: waiting[2]}
    assert claims(waiting, before=3) == {0: waiting[0], 1: waiting[0]}  # what request 3 must let go first
    assert claims(waiting, before=1) == {}


waiting_lists = st.lists(st.tuples(st.sets(st.integers(0, 5), min_size=1, max_size=3),
                                   st.sampled_from(list(WaitState))), max_size=12).map(
    lambda rows: [entry(i + 1, *sorted(gpus), state=state) for i, (gpus, state) in enumerate(rows)])


@given(waiting_lists)
def test_loads_first_in_line_never_share_a_gpu_and_each_gpu_is_promised_to_its_first(waiting: list[WaitEntry]) -> None:
    firsts = [item for item in waiting if item.waiting and position(item, waiting) == 1]
    for a in firsts:
        for b in firsts:
            assert a is b or not set(a.gpu_indexes) & set(b.gpu_indexes)
    for index, promised in claims(waiting).items():
        assert promised.waiting and index in promised.gpu_indexes
        assert promised.id == min(item.id for item in waiting if item.waiting and index in item.gpu_indexes)
    assert sorted(positions(waiting)) == [item.id for item in waiting if item.waiting]


@pytest.mark.parametrize(("text", "seconds"), [("3600", 3600), ("90s", 90), ("30m", 1800), ("1h", 3600),
                                                ("1h30m", 5400), (" 2d ", 172800), ("1H 5M", 3900)])
def test_durations(text: str, seconds: int) -> None:
    assert parse_duration_seconds(text) == seconds


@pytest.mark.parametrize("text", ["", "0", "h", "1x", "-5", "1.5h", "8d", "1m1h", "10000000000"])
def test_bad_durations_say_what_is_accepted(text: str) -> None:
    with pytest.raises(ValueError, match=r"duration|a wait lasts"):
        parse_duration_seconds(text)


@given(st.integers(1, MAX_WAIT_SECONDS))
def test_any_allowed_wait_reads_back_from_its_parts(seconds: int) -> None:
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    assert parse_duration_seconds(f"{hours}h{minutes}m{secs}s") == seconds


@given(st.text(max_size=30))
def test_any_text_is_a_duration_or_a_clear_error(text: str) -> None:
    try:
        assert 1 <= parse_duration_seconds(text) <= MAX_WAIT_SECONDS
    except ValueError as error:
        assert "duration" in str(error) or "a wait lasts" in str(error)


def add(store: Store, *gpus: int, name: str = "alpha", at: datetime = T0) -> WaitEntry:
    with store.exclusive() as tx:
        return tx.add_wait(model_name=name, gpu_indexes=gpus, owner="alice", client="cli", requested_at=at,
                           expires_at=at + timedelta(minutes=5))


def test_an_entry_ends_once_and_old_ended_entries_are_pruned(tmp_path: Path) -> None:
    store = Store(tmp_path / "gpuwarden.db")
    old, new = add(store, 0), add(store, 1, name="beta", at=T0 + timedelta(days=8))
    with store.exclusive() as tx:
        assert tx.end_wait(old.id, WaitState.WITHDRAWN, at=T0, detail="x") is True
        assert tx.end_wait(old.id, WaitState.EXPIRED, at=T0, detail="y") is False  # already ended
        assert tx.wait_entry(old.id) == WaitEntry(old.id, "alpha", (0,), "alice", "cli", T0,
                                                  T0 + timedelta(minutes=5), WaitState.WITHDRAWN, T0, "x")
        assert [item.id for item in tx.waiting_entries()] == [new.id]
        tx.end_wait(new.id, WaitState.STARTED, at=T0 + timedelta(days=8), detail="placement 1")
        assert tx.wait_entry(old.id) is None  # ended more than a week before
        assert tx.end_wait(new.id, WaitState.FAILED, at=T0, detail="launch", from_state=WaitState.STARTED) is True


@pytest.mark.parametrize(("column", "value"), [("gpu_indexes", "[]"), ("gpu_indexes", "[true]"),
                                               ("gpu_indexes", "{"), ("state", "dreaming"),
                                               ("expires_at", "soon"), ("model_name", None)])
def test_a_damaged_queue_row_is_reported_never_trusted(tmp_path: Path, column: str, value: str | None) -> None:
    path = tmp_path / "gpuwarden.db"
    add(Store(path), 0)
    with closing(sqlite3.connect(path)) as db, db:
        if column == "model_name":
            db.execute("PRAGMA ignore_check_constraints = 1")
            db.executescript("CREATE TABLE w2 AS SELECT * FROM waitlist; DROP TABLE waitlist;"
                             " ALTER TABLE w2 RENAME TO waitlist; UPDATE waitlist SET model_name = NULL;")
        else:
            db.execute(f"UPDATE waitlist SET {column} = ?", (value,))
    with pytest.raises(StoreError, match="queue row 1 is damaged"), Store(path).read() as tx:
        tx.waiting_entries() if column != "state" else tx.wait_entry(1)


def test_a_version_2_database_gains_the_queue(tmp_path: Path) -> None:
    path = tmp_path / "gpuwarden.db"
    with Store(path).exclusive() as tx:
        tx.save_settings({"memory_threshold_mib": 99})
    with closing(sqlite3.connect(path)) as db, db:
        db.executescript("DROP TABLE waitlist; UPDATE meta SET value = '2' WHERE key = 'schema_version';")
    store = Store(path)
    with store.read() as tx:
        assert tx.waiting_entries() == [] and tx.settings() == {"memory_threshold_mib": 99}
    assert add(store, 3).gpu_indexes == (3,)
    with closing(sqlite3.connect(path)) as db:
        assert db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == (str(SCHEMA_VERSION),)
