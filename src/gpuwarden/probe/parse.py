"""Pure parsers for everything nvidia-smi prints: text in, frozen records out.

Format is detected from the content (:func:`detect_kind`). No parser reads fixed column positions:
table rows are split on their ``|`` borders and matched by shape, CSV columns are named by their
header (or by the command, for ``noheader`` output), XML by element names. Any input either parses
or raises :class:`NvidiaSmiParseError`; nothing else escapes.

This module is the public entry point; the per-format parsers live in ``parse_table`` (plain
table), ``parse_csv`` (``--query-gpu`` / ``--query-compute-apps``), ``parse_xml`` (``-q -x``,
``pmon``, ``-L``), and the helpers they share in ``parse_common``.
"""

from __future__ import annotations

from collections.abc import Sequence

from gpuwarden.probe.parse_common import (
    NvidiaSmiParseError,
    clean_lines,
    looks_like_error,
    missing,
    normalize_bus_id,
    parse_int,
    parse_mib,
)
from gpuwarden.probe.parse_csv import command_columns, csv_kind, is_command_line, parse_csv
from gpuwarden.probe.parse_table import parse_table
from gpuwarden.probe.parse_xml import LIST_LINE, parse_list, parse_pmon, parse_xml
from gpuwarden.records import OutputKind, ParsedOutput

__all__ = [
    "NvidiaSmiParseError",
    "detect_kind",
    "missing",
    "normalize_bus_id",
    "parse_csv",
    "parse_error",
    "parse_int",
    "parse_list",
    "parse_mib",
    "parse_output",
    "parse_pmon",
    "parse_table",
    "parse_xml",
]


def detect_kind(text: str, columns: Sequence[str] | None = None) -> OutputKind:
    """Tell which nvidia-smi output ``text`` is, from its content alone."""
    lines = [line for line in clean_lines(text) if line.strip()]
    if not lines:
        raise NvidiaSmiParseError("empty output")
    if "<nvidia_smi_log" in text:
        return OutputKind.XML
    if any(line.startswith("+-") for line in lines) and any(line.startswith("|") for line in lines):
        return OutputKind.TABLE
    first_data = [line for line in lines if not is_command_line(line)]
    if first_data and first_data[0].lstrip().startswith("# gpu") and "pid" in first_data[0]:
        return OutputKind.PMON
    if all(LIST_LINE.match(line.strip()) for line in first_data) and first_data:
        return OutputKind.LIST
    if first_data and all("," in line for line in first_data):
        return csv_kind(first_data, columns or command_columns(lines))
    if looks_like_error(lines):
        return OutputKind.ERROR
    raise NvidiaSmiParseError(f"unrecognised nvidia-smi output starting with {lines[0][:80]!r}")


def parse_output(text: str, columns: Sequence[str] | None = None) -> ParsedOutput:
    """Parse any nvidia-smi output. ``columns`` names the fields of a ``noheader`` CSV."""
    if not isinstance(text, str):
        raise NvidiaSmiParseError("output is not text")
    kind = detect_kind(text, columns)
    if kind is OutputKind.XML:
        return parse_xml(text)
    if kind is OutputKind.TABLE:
        return parse_table(text)
    if kind is OutputKind.PMON:
        return parse_pmon(text)
    if kind is OutputKind.LIST:
        return parse_list(text)
    if kind in (OutputKind.CSV_GPU, OutputKind.CSV_APPS):
        return parse_csv(text, columns)
    return parse_error(text)


def parse_error(text: str) -> ParsedOutput:
    """An error output: its lines are kept as the message the user is shown."""
    lines = tuple(line.strip() for line in clean_lines(text) if line.strip())
    if not lines:
        raise NvidiaSmiParseError("empty output")
    return ParsedOutput(kind=OutputKind.ERROR, messages=(" ".join(lines)[:2000],))
