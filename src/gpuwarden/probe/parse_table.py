"""Parser for plain ``nvidia-smi`` output: the boxed table of GPUs and the ``Processes:`` box.

No column positions are read: rows are split on their ``|`` borders and matched by shape, so every
driver generation's layout (Windows and MIG included) is read the same way. Telemetry (fan,
temperature, power, utilization) is read by the labels of the GPU box's header rows. Every pattern
here is anchored or bounded so that it runs in linear time on any line, however long.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from gpuwarden.probe.parse_common import (
    BUS_ID,
    MAX_FAN_PERCENT,
    NvidiaSmiParseError,
    checked_gpus,
    clean_lines,
    looks_like_error,
    normalize_bus_id,
    parse_celsius,
    parse_int,
    parse_mib,
    parse_percent,
    parse_watts,
    read_memory,
    shown,
)
from gpuwarden.records import GpuProcess, GpuReading, OutputKind, ParsedOutput

__all__ = ["parse_table"]

# "5918MiB / 16160MiB": a number may not start inside another number (the lookbehind), so a long
# digit run is scanned once, not once per digit. Signs are captured so "-774MiB" is refused, not read as 774.
_MEMORY_PAIR = re.compile(r"(?<![0-9.+-])([-+]?[0-9]+)\s*MiB\s*/\s*([-+]?[0-9]+)\s*MiB")
_TIMESTAMP = re.compile(r"^[A-Z][a-z]{2} [A-Z][a-z]{2} +[0-9]{1,2} [0-9]{2}:[0-9]{2}:[0-9]{2} [0-9]{4}\s*$")
_GPU_NAME_SUFFIXES = frozenset({"On", "Off", "WDDM", "TCC", "MCDM", "N/A"})
_GPU_FIRST_CELL = re.compile(r"\s*([0-9]+)\s+(\S.*)")
# The head of a process row up to its type; the name and memory are split off the rest by hand.
_PROCESS_TYPE = r"([CGM](?:\+[CGM])*)\s+(\S.*)"
_PROCESS_HEAD_GI_CI = re.compile(r"\s*([0-9]+)\s+\S+\s+\S+\s+([0-9]+)\s+" + _PROCESS_TYPE)
_PROCESS_HEAD_PLAIN = re.compile(r"\s*([0-9]+)\s+([0-9]+)\s+" + _PROCESS_TYPE)
_DRIVER_VERSION = re.compile(r"(?:Driver Version|KMD Version):\s*([0-9.]{1,40})")
_PROMPT_END = ("$", "#", ">")
# Header labels of one-word values: a label's value is the value at the label's place in its cell,
# as long as every label before it in that cell is one of these.
_ONE_WORD_LABELS = frozenset({"Fan", "Temp", "Perf", "Pwr:Usage/Cap", "GPU-Util"})
_MAX_HEADER_ROWS = 8
_COMMAND_NAMES = ("nvidia-smi", "nvidia-smi.exe")


@dataclass
class _TableScan:
    """What has been read so far, line by line, from one table output."""

    messages: list[str] = field(default_factory=list)
    gpus: list[GpuReading] = field(default_factory=list)
    processes: list[GpuProcess] = field(default_factory=list)
    driver_version: str | None = None
    section: str = "preamble"  # preamble | gpus | mig | processes | other
    process_has_gi_ci: bool = False
    process_rows_started: bool = False
    current: dict[str, object] | None = None  # the GPU whose rows are being read
    memory_seen: bool = False  # the current GPU's "MiB / MiB" cell was found (readable or not)
    saw_box: bool = False
    # The GPU box's header: per header row, per cell, its labels ("Fan", "Temp", ...). The n-th row
    # of a GPU's block holds the values the n-th header row names.
    header_rows: list[list[list[str]]] = field(default_factory=list)
    header_done: bool = False  # the "|===" rule below the header was passed
    block_row: int = 0  # which row of the current GPU's block is being read (0: its first row)

    def finish_gpu(self) -> None:
        if self.current is not None:
            self.gpus.append(GpuReading(**self.current))  # type: ignore[arg-type]
            self.current = None
        self.memory_seen = False


def parse_table(text: str) -> ParsedOutput:
    """Plain ``nvidia-smi``: every driver generation's layout, Windows and MIG included.

    GPUs are the rows of the first box whose cells hold an index + name and a PCI bus id; their
    ``MiB / MiB`` memory is on a following row of the same block. Rows of a ``MIG devices:`` box
    are not GPUs. Processes come from the ``Processes:`` box, with or without ``GI CI`` columns.
    """
    scan = _TableScan()
    for raw in clean_lines(text):
        _scan_line(scan, raw.rstrip())
    scan.finish_gpu()
    return _table_result(scan)


def _scan_line(scan: _TableScan, line: str) -> None:
    stripped = line.strip()
    if not stripped:
        return
    if not (stripped.startswith("|") or stripped.startswith("+")):
        _scan_text_line(scan, stripped)
        return
    scan.saw_box = True
    if stripped.startswith("+"):
        scan.finish_gpu()
        return
    if _scan_section_marker(scan, line, stripped):
        return
    if scan.section == "processes":
        _scan_process_line(scan, line, stripped)
    elif scan.section == "gpus" and stripped.startswith("|="):
        scan.header_done = True
    elif scan.section == "gpus":
        _scan_gpu_line(scan, _cells(line))


def _scan_text_line(scan: _TableScan, stripped: str) -> None:
    """A line outside the boxes: kept as a message unless it is a timestamp or the command prompt.
    Once the boxes have begun, only error-looking lines are kept."""
    if scan.saw_box and scan.section != "preamble" and not looks_like_error([stripped]):
        return
    if not _TIMESTAMP.match(stripped) and not _is_prompt_line(stripped):
        scan.messages.append(stripped)


def _scan_section_marker(scan: _TableScan, line: str, stripped: str) -> bool:
    """Read the driver version or a box title that starts a new section; True if ``line`` was one."""
    version = _DRIVER_VERSION.search(line)
    if version:
        scan.driver_version = version.group(1)
        return True
    lowered = stripped.lower()
    if "processes:" in lowered:
        scan.finish_gpu()
        scan.section, scan.process_rows_started, scan.process_has_gi_ci = "processes", False, False
        return True
    if "mig devices:" in lowered:
        scan.finish_gpu()
        scan.section = "mig"
        return True
    if scan.section == "preamble" and re.search(r"\bGPU\s+Name\b", stripped):
        scan.section = "gpus"
        scan.header_rows = [_labels(line)]
        return True
    return False


def _scan_process_line(scan: _TableScan, line: str, stripped: str) -> None:
    if re.search(r"\bGI\b", stripped) and re.search(r"\bPID\b", stripped):
        scan.process_has_gi_ci = True
    if stripped.startswith("|="):
        scan.process_rows_started = True
        return
    if scan.process_rows_started:
        process = _parse_process_row(" ".join(_cells(line)), scan.process_has_gi_ci)
        if process is not None:
            scan.processes.append(process)


def _scan_gpu_line(scan: _TableScan, cells: Sequence[str]) -> None:
    """A row of the GPU box: either the first row of a new GPU, or one holding its memory."""
    first_row = _parse_gpu_first_row(cells)
    if first_row is not None:
        scan.finish_gpu()
        scan.current, scan.header_done, scan.block_row = first_row, True, 0
        return
    current = scan.current
    if current is None:
        if not scan.header_done and len(scan.header_rows) < _MAX_HEADER_ROWS:
            scan.header_rows.append([cell.split() for cell in cells])
        return
    scan.block_row += 1
    if scan.block_row < len(scan.header_rows):
        current.update(_telemetry(scan.header_rows[scan.block_row], cells))
    if not scan.memory_seen:
        index = current["index"]
        assert isinstance(index, int)
        for cell in cells:
            pair = _MEMORY_PAIR.search(cell)
            if pair:
                used, total, notes = read_memory(index, pair.group(1), pair.group(2))
                current["memory_used_mib"], current["memory_total_mib"] = used, total
                scan.messages.extend(notes)
                scan.memory_seen = True
                break


def _table_result(scan: _TableScan) -> ParsedOutput:
    if not scan.gpus and not scan.processes and not scan.driver_version:
        if scan.messages:
            return ParsedOutput(kind=OutputKind.ERROR, messages=(" ".join(scan.messages)[:2000],))
        raise NvidiaSmiParseError("table output without any GPU row")
    gpus, notes = checked_gpus(scan.gpus)
    return ParsedOutput(
        kind=OutputKind.TABLE,
        gpus=gpus,
        processes=tuple(scan.processes),
        messages=(*scan.messages, *notes),
        driver_version=scan.driver_version,
        lists_processes=scan.section == "processes" or bool(scan.processes),
    )


def _labels(line: str) -> list[list[str]]:
    return [cell.split() for cell in _cells(line)]


def _telemetry(header: Sequence[Sequence[str]], cells: Sequence[str]) -> dict[str, object]:
    """The telemetry a GPU row holds, read by the labels of its header row: ``Fan`` (``0%``),
    ``Temp`` (``54C``), ``Pwr:Usage/Cap`` (``23W / 340W``), ``GPU-Util`` (``3%``). Each value must
    carry its unit, so a row of another layout gives None, never a misread number."""
    found: dict[str, object] = {}
    for labels, cell in zip(header, cells, strict=False):
        values = _cell_values(cell)
        for place, label in enumerate(labels):
            if place >= len(values) or label not in _ONE_WORD_LABELS:
                break
            value = values[place]
            if label == "Fan":
                found["fan_percent"] = parse_percent(value, MAX_FAN_PERCENT, unit_required=True)
            elif label == "Temp":
                found["temperature_c"] = parse_celsius(value, unit_required=True)
            elif label == "GPU-Util":
                found["utilization_percent"] = parse_percent(value, unit_required=True)
            elif label == "Pwr:Usage/Cap":
                draw, _, cap = value.partition(" / ")
                found["power_draw_w"] = parse_watts(draw, unit_required=True)
                found["power_limit_w"] = parse_watts(cap, unit_required=True, zero_allowed=False)
    return found


def _cell_values(cell: str) -> list[str]:
    """The whitespace-separated values of a cell, ``A / B`` kept as one value (``23W / 340W``,
    ``N/A / N/A``)."""
    values: list[str] = []
    tokens = cell.split()
    place = 0
    while place < len(tokens):
        if place + 2 < len(tokens) and tokens[place + 1] == "/":
            values.append(f"{tokens[place]} / {tokens[place + 2]}")
            place += 3
        else:
            values.append(tokens[place])
            place += 1
    return values


def _cells(line: str) -> list[str]:
    """The cells of a table row between its ``|`` borders."""
    inner = line.strip()
    if inner.startswith("|"):
        inner = inner[1:]
    if inner.endswith("|"):
        inner = inner[:-1]
    return inner.split("|")


def _parse_gpu_first_row(cells: Sequence[str]) -> dict[str, object] | None:
    """The first row of a GPU: index and name, then its PCI bus id. An index too long to be one
    is refused, never skipped: a GPU row that is dropped would hide a GPU."""
    if len(cells) < 2:
        return None
    match = _GPU_FIRST_CELL.match(cells[0])
    if not match or not BUS_ID.search(cells[1]):
        return None
    index = parse_int(match.group(1))
    if index is None:
        raise NvidiaSmiParseError(f"GPU row with an unreadable index {shown(match.group(1))}")
    return {
        "index": index,
        "name": _gpu_name(match.group(2)),
        "bus_id": normalize_bus_id(cells[1]),
        "memory_used_mib": None,
        "memory_total_mib": None,
    }


def _gpu_name(text: str) -> str | None:
    """The name cell without its trailing persistence / driver-model word (``On``, ``TCC``...)."""
    parts = text.rsplit(None, 1)
    if len(parts) == 2 and parts[1] in _GPU_NAME_SUFFIXES:
        return parts[0].strip() or None
    return text.strip() or None


def _parse_process_row(row: str, has_gi_ci: bool) -> GpuProcess | None:
    patterns = (_PROCESS_HEAD_GI_CI, _PROCESS_HEAD_PLAIN) if has_gi_ci else (_PROCESS_HEAD_PLAIN, _PROCESS_HEAD_GI_CI)
    for pattern in patterns:
        match = pattern.match(row)
        tail = _name_and_memory(match.group(4)) if match else None
        if match and tail:
            gpu, pid = parse_int(match.group(1)), parse_int(match.group(2))
            if gpu is None or pid is None:
                return None
            return GpuProcess(pid=pid, name=tail[0], type=match.group(3), used_memory_mib=parse_mib(tail[1]),
                              gpu_index=gpu)
    return None


def _name_and_memory(rest: str) -> tuple[str, str] | None:
    """``python3    2566MiB`` -> (``python3``, ``2566MiB``); the memory is the last field (``N/A`` or
    a number of MiB), the name everything before it, inner spaces kept as printed."""
    rest = rest.rstrip()
    if rest.endswith("N/A"):
        head, memory = rest[:-3], "N/A"
    elif rest.endswith("MiB"):
        number = rest[:-3].rstrip()
        start = len(number)
        while start > 0 and number[start - 1] in "0123456789":
            start -= 1
        if start == len(number):
            return None
        head, memory = number[:start], number[start:] + "MiB"
    else:
        return None
    if not head[-1:].isspace() or not head.strip():
        return None
    return head.rstrip(), memory


def _is_prompt_line(line: str) -> bool:
    """``$ nvidia-smi``, ``C:\\Users\\me> nvidia-smi``, ``/usr/bin/nvidia-smi -a``: the recorded command."""
    tokens = line.split()
    if not tokens:
        return False
    if len(tokens) > 1 and tokens[0].endswith(_PROMPT_END) and _is_command(tokens[1], "/\\"):
        flags = tokens[2:]
    elif _is_command(tokens[0], "/\\$#>"):
        flags = tokens[1:]
    else:
        return False
    return all(len(flag) > 1 and flag.startswith("-") for flag in flags)


def _is_command(token: str, separators: str) -> bool:
    """``nvidia-smi`` or ``nvidia-smi.exe``, alone or after a path / prompt ending in ``separators``."""
    lowered = token.lower()
    for name in _COMMAND_NAMES:
        if lowered == name or (lowered.endswith(name) and lowered[-len(name) - 1] in separators):
            return True
    return False
