"""The launcher's records are untrusted files: anything odd is no record, never a crash and never a
reason to stop a stranger's process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gpuwarden.process.exitrecord import (
    model_path_beside,
    model_path_for,
    read_exit_record,
    read_model_record,
    write_exit_record,
    write_model_record,
)


def test_records_round_trip_beside_the_log(tmp_path: Path) -> None:
    log = tmp_path / "llama-20261127-abc.log"
    exit_path = log.with_suffix(".exit.json")
    assert model_path_beside(exit_path) == model_path_for(log) == tmp_path / "llama-20261127-abc.model.json"
    write_model_record(model_path_beside(exit_path), 4242, 1_700_000_000.25)
    write_exit_record(exit_path, -9, None)
    assert read_model_record(model_path_for(log)) == (4242, 1_700_000_000.25)
    assert read_exit_record(exit_path) is not None and read_exit_record(exit_path).exit_code == -9  # type: ignore[union-attr]
    assert sorted(p.name for p in tmp_path.iterdir()) == [log.with_suffix(".exit.json").name,
                                                         log.with_suffix(".model.json").name]  # no .tmp left


@pytest.mark.parametrize("text", [
    '{"pid": 1, "start_time": NaN}', '{"pid": 4242, "start_time": Infinity}', '{"pid": 4242, "start_time": null}',
    '{"pid": 4242}', '{"pid": 1, "start_time": 1700000000.5}', '{"pid": true, "start_time": 1.5}',
    '{"pid": ' + "9" * 401 + ', "start_time": 1.5}', '{"pid": 4242, "start_time": ' + "9" * 401 + "}",
    '{"pid": -5, "start_time": 1.5}', '{"pid": "4242", "start_time": 1.5}', "[4242, 1.5]", "not json", ""])
def test_a_hostile_model_record_is_no_record(tmp_path: Path, text: str) -> None:
    path = tmp_path / "x.model.json"
    path.write_text(text, encoding="utf-8")
    assert read_model_record(path) is None


def test_a_valid_record_needs_a_finite_start_time(tmp_path: Path) -> None:
    path = tmp_path / "x.model.json"
    path.write_text(json.dumps({"pid": 4242, "start_time": 1.5}), encoding="utf-8")
    assert read_model_record(path) == (4242, 1.5)


def test_records_nested_past_the_parsers_depth_are_no_records(tmp_path: Path) -> None:
    from gpuwarden.process.exitrecord import read_stop_request

    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000, encoding="utf-8")
    assert read_exit_record(deep) is None and read_model_record(deep) is None
    assert read_stop_request(deep) == 0.0  # a stop request that does not decode: stop now
