"""Parser for ``nvidia-smi --query-gpu=... --format=csv`` and ``--query-compute-apps=...`` CSV.

Columns are named by the header row (with or without ``[MiB]`` units), or, for ``noheader``
output, by the columns the caller names, by an echoed ``nvidia-smi --query-...=`` command line,
or by the few headerless shapes gpuwarden recognises by their values.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from gpuwarden.probe.parse_common import (
    MAX_FAN_PERCENT,
    NvidiaSmiParseError,
    checked_gpus,
    clean_lines,
    missing,
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

__all__ = ["command_columns", "csv_kind", "is_command_line", "parse_csv"]

# An echoed ``nvidia-smi ... --query-gpu=a,b,c`` line names the columns of the rows below it.
_COMMAND = re.compile(r"(?:^|\s)nvidia-smi(?:\.exe)?\s", re.IGNORECASE)
_QUERY = re.compile(r"--query-(?:gpu|compute-apps)=", re.IGNORECASE)
_TOKEN = re.compile(r"\S+")
_UUID = re.compile(r"^(GPU|MIG)-[0-9A-Fa-f-]+$")
# Telemetry columns, each field's names in order of preference (nvidia-smi --help-query-gpu). The
# power limit is the enforced one where given (as NVML and -q -x report it), else the requested one.
_POWER_DRAW_COLUMNS = ("power.draw", "power.draw.average", "gpu.power.draw.average", "power.draw.instant",
                       "gpu.power.draw.instant")
_POWER_LIMIT_COLUMNS = ("enforced.power.limit", "gpu.power.current_limit", "power.limit",
                        "gpu.power.requested_limit")
_TELEMETRY_FIELDS = {"utilization.gpu", "temperature.gpu", "fan.speed", *_POWER_DRAW_COLUMNS,
                     *_POWER_LIMIT_COLUMNS}
_GPU_FIELDS = {"index", "uuid", "name", "pci.bus_id", "memory.used", "memory.total", "memory.free",
               "driver_version", "count", "gpu_name", "gpu_uuid", "gpu_bus_id", *_TELEMETRY_FIELDS}
# Other names of the same field (nvidia-smi --help-query-gpu / --help-query-compute-apps: `"uuid" or
# "gpu_uuid"`). Only the same field may share a name: `pci.bus` (the bus NUMBER) is not `pci.bus_id`.
_GPU_ALIASES = {
    "gpu_uuid": "uuid",
    "gpu_bus_id": "pci.bus_id",
    "gpu_name": "name",
    "busid": "pci.bus_id",
}
_APPS_ALIASES = {
    "used_gpu_memory": "used_memory",
    "gpu_uuid": "uuid",
    "gpu_bus_id": "pci.bus_id",
    "busid": "pci.bus_id",
    "name": "process_name",  # in --query-compute-apps, "name" is the process name; the GPU's is gpu_name
}
# Headerless shapes gpuwarden infers without being told the columns.
_SEED_GPU_COLUMNS = ("index", "memory.used")
_APPS_UUID_COLUMNS = ("gpu_uuid", "pid", "process_name", "used_memory")
_APPS_UUID_BUS_COLUMNS = ("gpu_uuid", "gpu_bus_id", "pid", "process_name", "used_memory")


def _field_name(header_cell: str) -> str:
    """``memory.used [MiB]`` -> ``memory.used``: the cell without a trailing ``[unit]``, lower case."""
    name = header_cell.strip()
    if name.endswith("]"):
        last = len(name) - 1
        start = name.find("[", name.rfind("]", 0, last) + 1, last)  # the first "[" of the last [...]
        if start >= 0:
            name = name[:start]
    return name.strip().lower()


def _column_names(cells: Sequence[str]) -> tuple[str, ...]:
    """The fields header cells (or named columns) stand for, aliases resolved. Two columns for the
    same field are refused: which of them would be the value?"""
    raw = [_field_name(cell) for cell in cells]
    aliases = _APPS_ALIASES if "pid" in raw else _GPU_ALIASES
    names = tuple(aliases.get(name, name) for name in raw)
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise NvidiaSmiParseError(f"CSV columns named twice: {', '.join(shown(name) for name in twice[:5])}")
    return names


def _query(line: str) -> str | None:
    """The ``a,b,c`` of an echoed ``nvidia-smi ... --query-gpu=a,b,c`` line (the last one named)."""
    command = _COMMAND.search(line)
    if command is None:
        return None
    ends = [query.end() for query in _QUERY.finditer(line, command.end())]
    last = next((end for end in reversed(ends) if _TOKEN.match(line, end, end + 1)), None)
    token = _TOKEN.match(line, last) if last is not None else None  # one scan of one value: linear
    return token.group() if token else None


def is_command_line(line: str) -> bool:
    """True for an echoed ``nvidia-smi ... --query-gpu=...`` / ``--query-compute-apps=...`` line."""
    return _query(line) is not None


def command_columns(lines: Sequence[str]) -> tuple[str, ...] | None:
    """The columns named by an echoed ``nvidia-smi --query-...=`` line among ``lines``, if any."""
    for line in lines:
        query = _query(line)
        if query is not None:
            return tuple(part.strip().lower() for part in query.split(",") if part.strip())
    return None


def _is_header(cells: Sequence[str]) -> bool:
    names = {_field_name(cell) for cell in cells}
    return bool(names & (_GPU_FIELDS | {"pid", "process_name", "used_memory", "used_gpu_memory", "memory.used"}))


def csv_kind(data_lines: Sequence[str], columns: Sequence[str] | None) -> OutputKind:
    """GPU or compute-apps CSV, from its header or (headerless) its columns."""
    cells = [cell.strip() for cell in data_lines[0].split(",")]
    names = [_field_name(c) for c in cells] if _is_header(cells) else list(columns or _infer_columns(cells))
    return OutputKind.CSV_APPS if "pid" in names else OutputKind.CSV_GPU


def _infer_columns(cells: Sequence[str]) -> tuple[str, ...]:
    values = [cell.strip() for cell in cells]
    if len(values) == 2 and parse_int(values[0]) is not None and parse_mib(values[1]) is not None:
        return _SEED_GPU_COLUMNS
    if values and _UUID.match(values[0]):
        if len(values) >= 5 and normalize_bus_id(values[1]) and parse_int(values[2]) is not None:
            return _APPS_UUID_BUS_COLUMNS
        if len(values) >= 4 and parse_int(values[1]) is not None:
            return _APPS_UUID_COLUMNS
    raise NvidiaSmiParseError(
        f"CSV without a header and with {len(values)} columns: name its columns "
        "(mock_smi_columns, e.g. 'index,memory.used'), or record it with a header"
    )


def _split_row(line: str, width: int, free_text_column: int | None) -> list[str]:
    """Split on commas; surplus cells (a process name containing a comma) rejoin the name."""
    parts = line.split(",")
    if len(parts) > width and free_text_column is not None:
        surplus = len(parts) - width
        joined = ",".join(parts[free_text_column:free_text_column + surplus + 1])
        parts = [*parts[:free_text_column], joined, *parts[free_text_column + surplus + 1:]]
    return [part.strip() for part in parts]


def parse_csv(text: str, columns: Sequence[str] | None = None) -> ParsedOutput:
    """``--query-gpu`` or ``--query-compute-apps`` CSV, with or without header and units."""
    lines = [line for line in clean_lines(text) if line.strip()]
    command = command_columns(lines)
    lines = [line for line in lines if not is_command_line(line)]
    if not lines:
        raise NvidiaSmiParseError("CSV output without rows")
    names, rows = _columns_and_rows(lines, columns or command)
    is_apps = "pid" in names
    free_text = _free_text_column(names)
    gpus: list[GpuReading] = []
    processes: list[GpuProcess] = []
    messages: list[str] = []
    for position, line in enumerate(rows):
        record = _row_record(line, position, names, free_text)
        if is_apps:
            processes.append(_process_from_row(record, position))
        else:
            gpus.append(_gpu_from_row(record, position, messages))
    checked, notes = checked_gpus(gpus)
    return ParsedOutput(
        kind=OutputKind.CSV_APPS if is_apps else OutputKind.CSV_GPU,
        gpus=checked,
        processes=tuple(processes),
        messages=(*messages, *notes),
        lists_processes=is_apps,
    )


def _columns_and_rows(lines: Sequence[str], named: Sequence[str] | None) -> tuple[tuple[str, ...], Sequence[str]]:
    """The column names and the data rows: the first line is the header if it looks like one;
    otherwise the columns are ``named`` (by the caller or an echoed command) or inferred."""
    first = [cell.strip() for cell in lines[0].split(",")]
    if _is_header(first):
        return _column_names(first), lines[1:]
    return _column_names(named or _infer_columns(first)), lines


def _free_text_column(names: Sequence[str]) -> int | None:
    """The column that may itself contain commas: the process name, else the GPU name."""
    if "process_name" in names:
        return names.index("process_name")
    return names.index("name") if "name" in names else None


def _row_record(line: str, position: int, names: Sequence[str], free_text: int | None) -> dict[str, str]:
    cells = _split_row(line, len(names), free_text)
    if len(cells) != len(names):
        raise NvidiaSmiParseError(
            f"CSV row {position + 1} has {len(cells)} cells where the columns are {len(names)}")
    return dict(zip(names, cells, strict=True))


def _process_from_row(record: dict[str, str], position: int) -> GpuProcess:
    pid = parse_int(record.get("pid"))
    if pid is None:
        raise NvidiaSmiParseError(f"CSV row {position + 1}: no PID in {shown(record.get('pid') or '')}")
    return GpuProcess(
        pid=pid,
        name=record.get("process_name") or "",
        type=None,
        used_memory_mib=parse_mib(record.get("used_memory")),
        gpu_index=parse_int(record.get("index")),
        gpu_uuid=None if missing(record.get("uuid")) else record.get("uuid"),
        gpu_bus_id=normalize_bus_id(record.get("pci.bus_id")),
    )


def _gpu_from_row(record: dict[str, str], position: int, messages: list[str]) -> GpuReading:
    """A ``--query-gpu`` row; without an ``index`` column a GPU's index is its row position."""
    index = parse_int(record.get("index"))
    if index is None:
        if "index" not in record:
            index = position
        else:
            raise NvidiaSmiParseError(f"CSV row {position + 1}: no GPU index in {shown(record['index'])}")
    name = record.get("name")
    used, total, notes = read_memory(index, record.get("memory.used"), record.get("memory.total"))
    messages.extend(notes)
    return GpuReading(
        index=index,
        name=None if missing(name) else name,
        uuid=None if missing(record.get("uuid")) else record.get("uuid"),
        bus_id=normalize_bus_id(record.get("pci.bus_id")),
        memory_used_mib=used,
        memory_total_mib=total,
        utilization_percent=parse_percent(record.get("utilization.gpu")),
        temperature_c=parse_celsius(record.get("temperature.gpu")),
        power_draw_w=_first_watts(record, _POWER_DRAW_COLUMNS, zero_allowed=True),
        power_limit_w=_first_watts(record, _POWER_LIMIT_COLUMNS, zero_allowed=False),
        fan_percent=parse_percent(record.get("fan.speed"), MAX_FAN_PERCENT),
    )


def _first_watts(record: dict[str, str], columns: Sequence[str], *, zero_allowed: bool) -> float | None:
    """The first of ``columns`` that holds a power in watts (``122.98 W`` or ``122.98``)."""
    values = (parse_watts(record.get(column), zero_allowed=zero_allowed) for column in columns)
    return next((value for value in values if value is not None), None)
