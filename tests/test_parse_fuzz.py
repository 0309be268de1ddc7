"""Fuzzing every recorded nvidia-smi output: characters flipped, inserted and deleted, the text cut
short, lines duplicated and deleted, numbers made huge, negative or thousands of digits long, control
characters inserted. Whatever comes out, the parser either reads it or raises NvidiaSmiParseError,
and what it reads can never make a busy GPU look free: one reading per GPU index, memory never
negative nor above the total. Deterministic (derandomize) so CI sees the same examples every run."""

from __future__ import annotations

import json
import re
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpuwarden.probe.assemble import build_snapshot
from gpuwarden.probe.parse import NvidiaSmiParseError, parse_output
from gpuwarden.records import OutputKind, ParsedOutput
from tests.conftest import H200, PUBLIC
from tests.test_parse import sidecar_columns
from tests.test_parse_hostile import NOW
from tests.test_telemetry import assert_sane as assert_sane_telemetry

FIXTURES = sorted(PUBLIC.glob("*.txt")) + sorted(H200.glob("*.txt"))
TEXTS = {path: path.read_text(encoding="utf-8") for path in FIXTURES}


def columns_of(path: Path) -> list[str] | None:
    sidecar = path.with_suffix(".json")
    return sidecar_columns(json.loads(sidecar.read_text(encoding="utf-8"))) if sidecar.is_file() else None


COLUMNS = {path: columns_of(path) for path in FIXTURES}
FUZZ = settings(max_examples=200, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow])

Draw = st.DrawFn
CONTROL = st.sampled_from(["\x00", "\x01", "\x07", "\x0b", "\x0c", "\x1b", "\x1f", "\x7f", "\x85", "\u2028",
                           "\ufeff", "\ufffe", "\r"])
NUMBERS = st.one_of(
    st.sampled_from(["-774", "-0", "-1", "0", "18446744073709551616", "1" * 13, "9" * 4301, "9" * 16_000,
                     "1e400", "nan", "3.5", "+5"]),
    st.integers(min_value=-10**15, max_value=10**15).map(str),
    st.integers(min_value=13, max_value=6000).map(lambda n: "7" * n),
)
SNIPPETS = st.one_of(CONTROL, st.text(max_size=12), NUMBERS.map(lambda n: n + "MiB"), st.sampled_from(
    [" | ", "|", "+---+", "\n", ",", "<gpu>", "</gpu>", "<!ENTITY", "&amp;", "[N/A]", "ERR!", " MiB / ", "GPU 0: "]))


def _position(draw: Draw, text: str) -> int:
    return draw(st.integers(min_value=0, max_value=len(text)))


def _flip(draw: Draw, text: str) -> str:
    at = _position(draw, text)
    return text[:at] + draw(st.one_of(CONTROL, st.characters())) + text[at + 1:]


def _insert(draw: Draw, text: str) -> str:
    at = _position(draw, text)
    return text[:at] + draw(SNIPPETS) + text[at:]


def _delete(draw: Draw, text: str) -> str:
    at = _position(draw, text)
    return text[:at] + text[at + draw(st.integers(min_value=1, max_value=300)):]


def _truncate(draw: Draw, text: str) -> str:
    return text[:_position(draw, text)]


def _line_op(draw: Draw, text: str) -> str:
    lines = text.split("\n")
    at = draw(st.integers(min_value=0, max_value=len(lines) - 1))
    if draw(st.booleans()):
        lines.insert(at, lines[at])
    else:
        del lines[at]
    return "\n".join(lines)


def _number(draw: Draw, text: str) -> str:
    numbers = list(re.finditer(r"[0-9]+", text))
    if not numbers:
        return text
    match = numbers[draw(st.integers(min_value=0, max_value=len(numbers) - 1))]
    return text[:match.start()] + draw(NUMBERS) + text[match.end():]


MUTATIONS = [_flip, _insert, _delete, _truncate, _line_op, _line_op, _number, _number]


@st.composite
def mutated_fixture(draw: Draw) -> tuple[Path, str]:
    path = draw(st.sampled_from(FIXTURES))
    text = TEXTS[path]
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        text = draw(st.sampled_from(MUTATIONS))(draw, text)
    return path, text


def assert_safe(parsed: ParsedOutput) -> None:
    """One reading per GPU index; memory None, or 0 <= used <= total; telemetry None or in range."""
    indexes = [gpu.index for gpu in parsed.gpus]
    assert len(indexes) == len(set(indexes)), indexes
    for gpu in parsed.gpus:
        assert gpu.index >= 0
        assert gpu.memory_total_mib is None or gpu.memory_total_mib >= 0, gpu
        if gpu.memory_used_mib is not None:
            assert gpu.memory_used_mib >= 0, gpu
            assert gpu.memory_total_mib is None or gpu.memory_used_mib <= gpu.memory_total_mib, gpu
        assert_sane_telemetry(gpu)


@FUZZ
@given(mutated_fixture())
def test_mutated_fixture_parses_safely_or_raises_parse_error(case: tuple[Path, str]) -> None:
    path, text = case
    try:
        parsed = parse_output(text, COLUMNS[path])
    except NvidiaSmiParseError:
        return
    assert_safe(parsed)
    snapshot = build_snapshot([parsed], NOW, "fuzz")
    assert [g.index for g in snapshot.gpus] == sorted({g.index for g in parsed.gpus})


def process_rows(text: str) -> list[int]:
    """The line numbers of the rows of a table's ``Processes:`` box (below its ``|===`` rule)."""
    lines = text.split("\n")
    start = next((n for n, line in enumerate(lines) if "Processes:" in line), None)
    if start is None:
        return []
    rule = next(n for n in range(start, len(lines)) if lines[n].startswith("|="))
    return [n for n in range(rule + 1, len(lines)) if lines[n].startswith("|")]


TABLES = [path for path in FIXTURES if process_rows(TEXTS[path])]


def test_the_table_fixtures_have_process_rows() -> None:
    assert sorted(path.name for path in TABLES) == [
        "002-p100x4-384.145-busy.txt", "008-v100x4-450.57-one-busy.txt", "013-v100s-x8-535.171.04-one-busy.txt",
        "017-rtx3080-576.80-windows-cg.txt", "019-l40s-x4-580.119.02-mixed.txt", "024-h100-mig-590.48.01-load.txt",
        "044-gtx1060-376.51-windows-insufficient-permissions.txt", "busy_table.txt", "busy_table_as_other_user.txt",
        "idle_table.txt"]
    assert len(process_rows(TEXTS[H200 / "busy_table.txt"])) == 2


@FUZZ
@given(st.sampled_from(TABLES), st.lists(st.tuples(st.integers(min_value=0, max_value=10_000), st.booleans()),
                                         min_size=1, max_size=6))
def test_duplicating_or_deleting_process_rows_never_changes_the_gpus(path: Path, edits: list[tuple[int, bool]]) -> None:
    original = parse_output(TEXTS[path])
    assert original.kind is OutputKind.TABLE and original.gpus
    lines = TEXTS[path].split("\n")
    for choice, duplicate in edits:
        rows = process_rows("\n".join(lines))
        if not rows:
            break
        at = rows[choice % len(rows)]
        if duplicate:
            lines.insert(at, lines[at])
        else:
            del lines[at]
    parsed = parse_output("\n".join(lines))
    assert parsed.gpus == original.gpus
    assert parsed.messages == original.messages
