"""Parser for plain ``nvidia-smi`` output: the boxed table of GPUs and the ``Processes:`` box.

No column positions are read: rows are split on their ``|`` borders and matched by shape, so every
driver generation's layout (Windows and MIG included) is read the same way.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from gpuwarden.probe.parse_common import (
    BUS_ID,
    NvidiaSmiParseError,
    clean_lines,
    looks_like_error,
    normalize_bus_id,
    parse_mib,
)
from gpuwarden.records import GpuProcess, GpuReading, OutputKind, ParsedOutput

__all__ = ["parse_table"]

_MEMORY_PAIR = re.compile(r"(\d+)\s*MiB\s*/\s*(\d+)\s*MiB")
_TIMESTAMP = re.compile(r"^[A-Z][a-z]{2} [A-Z][a-z]{2} +\d+ \d\d:\d\d:\d\d \d{4}\s*$")
_GPU_NAME_SUFFIX = re.compile(r"\s+(On|Off|WDDM|TCC|MCDM|N/A)\s*$")
_PROCESS_TYPE = r"(?P<type>[CGM](?:\+[CGM])*)"
_PROCESS_TAIL = r"\s+" + _PROCESS_TYPE + r"\s+(?P<name>\S.*?)\s+(?P<mem>\d+\s*MiB|N/A)\s*$"
_PROCESS_ROW_GI_CI = re.compile(r"^\s*(?P<gpu>\d+)\s+(?P<gi>\S+)\s+(?P<ci>\S+)\s+(?P<pid>\d+)" + _PROCESS_TAIL)
_PROCESS_ROW_PLAIN = re.compile(r"^\s*(?P<gpu>\d+)\s+(?P<pid>\d+)" + _PROCESS_TAIL)
_DRIVER_VERSION = re.compile(r"(?:Driver Version|KMD Version):\s*([0-9.]+)")
_PROMPT_LINE = re.compile(r"^(?:\S*[$#>]\s*)?(?:\S*[/\\])?nvidia-smi(?:\.exe)?(?:\s+-\S+)*\s*$", re.IGNORECASE)


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
    saw_box: bool = False

    def finish_gpu(self) -> None:
        if self.current is not None:
            self.gpus.append(GpuReading(**self.current))  # type: ignore[arg-type]
            self.current = None


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
    elif scan.section == "gpus" and not stripped.startswith("|="):
        _scan_gpu_line(scan, _cells(line))


def _scan_text_line(scan: _TableScan, stripped: str) -> None:
    """A line outside the boxes: kept as a message unless it is a timestamp or the command prompt.
    Once the boxes have begun, only error-looking lines are kept."""
    if scan.saw_box and scan.section != "preamble" and not looks_like_error([stripped]):
        return
    if not _TIMESTAMP.match(stripped) and not _PROMPT_LINE.match(stripped):
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
        scan.current = first_row
        return
    current = scan.current
    if current is not None and current.get("memory_used_mib") is None:
        for cell in cells:
            pair = _MEMORY_PAIR.search(cell)
            if pair:
                current["memory_used_mib"] = int(pair.group(1))
                current["memory_total_mib"] = int(pair.group(2))
                break


def _table_result(scan: _TableScan) -> ParsedOutput:
    if not scan.gpus and not scan.processes and not scan.driver_version:
        if scan.messages:
            return ParsedOutput(kind=OutputKind.ERROR, messages=(" ".join(scan.messages)[:2000],))
        raise NvidiaSmiParseError("table output without any GPU row")
    return ParsedOutput(
        kind=OutputKind.TABLE,
        gpus=tuple(scan.gpus),
        processes=tuple(scan.processes),
        messages=tuple(scan.messages),
        driver_version=scan.driver_version,
        lists_processes=scan.section == "processes" or bool(scan.processes),
    )


def _cells(line: str) -> list[str]:
    """The cells of a table row between its ``|`` borders."""
    inner = line.strip()
    if inner.startswith("|"):
        inner = inner[1:]
    if inner.endswith("|"):
        inner = inner[:-1]
    return inner.split("|")


def _parse_gpu_first_row(cells: Sequence[str]) -> dict[str, object] | None:
    if len(cells) < 2:
        return None
    match = re.match(r"^\s*(\d+)\s+(\S.*?)\s*$", cells[0])
    if not match or not BUS_ID.search(cells[1]):
        return None
    name = _GPU_NAME_SUFFIX.sub("", match.group(2)).strip() or None
    return {
        "index": int(match.group(1)),
        "name": name,
        "bus_id": normalize_bus_id(cells[1]),
        "memory_used_mib": None,
        "memory_total_mib": None,
    }


def _parse_process_row(row: str, has_gi_ci: bool) -> GpuProcess | None:
    patterns = (_PROCESS_ROW_GI_CI, _PROCESS_ROW_PLAIN) if has_gi_ci else (_PROCESS_ROW_PLAIN, _PROCESS_ROW_GI_CI)
    for pattern in patterns:
        match = pattern.match(row)
        if match:
            return GpuProcess(
                pid=int(match.group("pid")),
                name=match.group("name"),
                type=match.group("type"),
                used_memory_mib=parse_mib(match.group("mem")),
                gpu_index=int(match.group("gpu")),
            )
    return None
