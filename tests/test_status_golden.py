"""Golden tests of the ``gpuwarden status`` table: each recorded nvidia-smi output against the table
stored under tests/golden/ (as gpustat keeps expected output per driver scenario).

To regenerate after an intended change of the table, run with ``GPUWARDEN_UPDATE_GOLDEN=1`` and read
the diff of tests/golden/ before committing it.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from gpuwarden.classify import classify
from gpuwarden.cli import format_status
from gpuwarden.probe.mock import MockSource
from tests.conftest import H200, PUBLIC, REPO, TESTS
from tests.test_parse import sidecar_columns

GOLDEN = TESTS / "golden"
UPDATE = os.environ.get("GPUWARDEN_UPDATE_GOLDEN") == "1"
CHECKED_AT = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)
H200_NAMES = ("busy_table", "idle_table", "busy_xml", "idle_xml", "busy_q_min_header")
SEED = REPO / "data" / "gpu.txt"

CASES: list[tuple[Path, Path]] = [
    *((path, GOLDEN / "public" / path.name) for path in sorted(PUBLIC.glob("*.txt"))),
    *((H200 / f"{name}.txt", GOLDEN / "h200-driver-580" / f"{name}.txt") for name in H200_NAMES),
    (SEED, GOLDEN / "seed" / "gpu.txt"),
]


def clock() -> datetime:
    return CHECKED_AT


def columns_for(fixture: Path) -> list[str] | None:
    sidecar = fixture.with_suffix(".json")
    if fixture.parent != PUBLIC or not sidecar.is_file():
        return None
    return sidecar_columns(json.loads(sidecar.read_text(encoding="utf-8")))


def shown_name(fixture: Path) -> str:
    """The fixture's path as the table shows it: relative and with '/', the same on every machine."""
    return fixture.relative_to(REPO).as_posix()


def status_table(fixture: Path) -> str:
    snapshot = MockSource(paths=[fixture], columns=columns_for(fixture), clock=clock).snapshot()
    snapshot = replace(snapshot, source=f"mock {shown_name(fixture)}")
    return format_status(classify(snapshot, 30, ())) + "\n"


def read_golden(path: Path) -> str:
    return path.read_text(encoding="utf-8").replace("\r\n", "\n")


@pytest.mark.parametrize(("fixture", "golden"), CASES, ids=lambda p: shown_name(p) if isinstance(p, Path) else p)
def test_status_table_matches_golden(fixture: Path, golden: Path) -> None:
    table = status_table(fixture)
    if UPDATE:
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(table, encoding="utf-8", newline="\n")
        return
    assert golden.is_file(), f"{golden} is missing: run with GPUWARDEN_UPDATE_GOLDEN=1 to create it"
    assert table == read_golden(golden)


def test_every_golden_file_has_its_fixture() -> None:
    """A golden file whose fixture was renamed or removed would otherwise linger unchecked."""
    expected = {golden for _, golden in CASES}
    assert set(GOLDEN.rglob("*.txt")) == expected
    assert len(expected) == len(list(PUBLIC.glob("*.txt"))) + len(H200_NAMES) + 1


def test_golden_tables_are_not_vacuous() -> None:
    """Spot checks on the stored tables themselves, so a wrongly regenerated set does not pass."""
    seed = read_golden(GOLDEN / "seed" / "gpu.txt").splitlines()
    assert seed[0].startswith("Total GPUs: 2   threshold: 30 MiB   checked: 2026-11-27 10:00:00 UTC")
    assert seed[2].split()[-1] == "idle" and seed[3].endswith("occupied by someone else")
    assert "363 / 24564 MiB" in seed[3]
    busy = read_golden(GOLDEN / "h200-driver-580" / "busy_table.txt")
    assert "Total GPUs: 1" in busy and busy.count("PID 70") == 2 and "3193 / 143771 MiB" in busy
    assert read_golden(GOLDEN / "public" / "027-error-no-devices-found.txt").startswith("CPU Mode (No GPU Detected)")
