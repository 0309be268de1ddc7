"""Pure parsers for everything nvidia-smi prints: text in, frozen records out.

Format is detected from the content (:func:`detect_kind`). No parser reads fixed column positions:
table rows are split on their ``|`` borders and matched by shape, CSV columns are named by their
header (or by the command, for ``noheader`` output), XML by element names. Any input either parses
or raises :class:`NvidiaSmiParseError`; nothing else escapes.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ElementTree
from collections.abc import Sequence

from gpuwarden.records import GpuProcess, GpuReading, OutputKind, ParsedOutput


class NvidiaSmiParseError(ValueError):
    """The text is not an nvidia-smi output gpuwarden can read."""


# Cells nvidia-smi prints where it has no value.
_MISSING = re.compile(r"^\[?\s*(n/?a|not supported|unknown error|gpu is lost|requested functionality"
                      r" has been deprecated|insufficient permissions|err!?)\s*\]?$|^$", re.IGNORECASE)
_ERROR_PATTERNS = (
    "no devices were found",
    "nvidia-smi has failed",
    "couldn't communicate with the nvidia driver",
    "driver/library version mismatch",
    "gpu is lost",
    "unable to determine the device handle",
    "unknown error",
    "failed to initialize nvml",
    "no nvidia gpu",
    "not found",
    "is not recognized as an internal or external command",
    "insufficient permissions",
    "unable to",
    "error",
)
_BUS_ID = re.compile(r"\b([0-9A-Fa-f]{4,8}):([0-9A-Fa-f]{2}):([0-9A-Fa-f]{2})\.([0-9A-Fa-f])\b")
_MEMORY_PAIR = re.compile(r"(\d+)\s*MiB\s*/\s*(\d+)\s*MiB")
_TIMESTAMP = re.compile(r"^[A-Z][a-z]{2} [A-Z][a-z]{2} +\d+ \d\d:\d\d:\d\d \d{4}\s*$")
_GPU_NAME_SUFFIX = re.compile(r"\s+(On|Off|WDDM|TCC|MCDM|N/A)\s*$")
_PROCESS_TYPE = r"(?P<type>[CGM](?:\+[CGM])*)"
_PROCESS_TAIL = r"\s+" + _PROCESS_TYPE + r"\s+(?P<name>\S.*?)\s+(?P<mem>\d+\s*MiB|N/A)\s*$"
_PROCESS_ROW_GI_CI = re.compile(r"^\s*(?P<gpu>\d+)\s+(?P<gi>\S+)\s+(?P<ci>\S+)\s+(?P<pid>\d+)" + _PROCESS_TAIL)
_PROCESS_ROW_PLAIN = re.compile(r"^\s*(?P<gpu>\d+)\s+(?P<pid>\d+)" + _PROCESS_TAIL)
_DRIVER_VERSION = re.compile(r"(?:Driver Version|KMD Version):\s*([0-9.]+)")
_UUID = re.compile(r"^(GPU|MIG)-[0-9A-Fa-f-]+$")
_LIST_LINE = re.compile(r"^GPU (\d+): (.*?) \(UUID: (\S+)\)\s*$")
_PROMPT_LINE = re.compile(r"^(?:\S*[$#>]\s*)?(?:\S*[/\\])?nvidia-smi(?:\.exe)?(?:\s+-\S+)*\s*$", re.IGNORECASE)
_COMMAND_LINE = re.compile(r"(?:^|\s)nvidia-smi(?:\.exe)?\s.*--query-(?:gpu|compute-apps)=(\S+)", re.IGNORECASE)


def missing(value: str | None) -> bool:
    """True for the placeholders nvidia-smi prints instead of a value."""
    return value is None or bool(_MISSING.match(value.strip()))


def parse_mib(value: str | None) -> int | None:
    """``'3193 MiB'``, ``'3193MiB'``, ``'3193'`` -> 3193; placeholders and junk -> None."""
    if missing(value):
        return None
    assert value is not None
    text = value.strip()
    if text.lower().endswith("mib"):
        text = text[:-3].strip()
    try:
        number = float(text)
    except ValueError:
        return None
    if number != number or number < 0 or number > 2**53:  # NaN, negative, absurd
        return None
    return round(number)


def parse_int(value: str | None) -> int | None:
    if missing(value):
        return None
    assert value is not None
    text = value.strip()
    return int(text) if text.isascii() and text.isdigit() and len(text) < 19 else None


def normalize_bus_id(bus_id: str | None) -> str | None:
    """``00000000:0C:00.0`` and ``0000:0c:00.0`` both -> ``0000:0C:00.0`` (domain to 4 digits)."""
    if not bus_id:
        return None
    match = _BUS_ID.search(bus_id)
    if not match:
        return None
    domain, bus, device, function = match.groups()
    return f"{int(domain, 16):04X}:{bus.upper()}:{device.upper()}.{function.upper()}"


def _clean_lines(text: str) -> list[str]:
    text = text.lstrip("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
    return text.split("\n")


def detect_kind(text: str, columns: Sequence[str] | None = None) -> OutputKind:
    """Tell which nvidia-smi output ``text`` is, from its content alone."""
    lines = [line for line in _clean_lines(text) if line.strip()]
    if not lines:
        raise NvidiaSmiParseError("empty output")
    if "<nvidia_smi_log" in text:
        return OutputKind.XML
    if any(line.startswith("+-") for line in lines) and any(line.startswith("|") for line in lines):
        return OutputKind.TABLE
    first_data = [line for line in lines if not _COMMAND_LINE.search(line)]
    if first_data and first_data[0].lstrip().startswith("# gpu") and "pid" in first_data[0]:
        return OutputKind.PMON
    if all(_LIST_LINE.match(line.strip()) for line in first_data) and first_data:
        return OutputKind.LIST
    if first_data and all("," in line for line in first_data):
        return _csv_kind(first_data, columns or _command_columns(lines))
    if _looks_like_error(lines):
        return OutputKind.ERROR
    raise NvidiaSmiParseError(f"unrecognised nvidia-smi output starting with {lines[0][:80]!r}")


def _looks_like_error(lines: Sequence[str]) -> bool:
    lowered = " ".join(lines).lower()
    return len(lines) <= 20 and any(pattern in lowered for pattern in _ERROR_PATTERNS)


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
    lines = tuple(line.strip() for line in _clean_lines(text) if line.strip())
    if not lines:
        raise NvidiaSmiParseError("empty output")
    return ParsedOutput(kind=OutputKind.ERROR, messages=(" ".join(lines)[:2000],))


# --------------------------------------------------------------------------- plain table


def _cells(line: str) -> list[str]:
    """The cells of a table row between its ``|`` borders."""
    inner = line.strip()
    if inner.startswith("|"):
        inner = inner[1:]
    if inner.endswith("|"):
        inner = inner[:-1]
    return inner.split("|")


def parse_table(text: str) -> ParsedOutput:
    """Plain ``nvidia-smi``: every driver generation's layout, Windows and MIG included.

    GPUs are the rows of the first box whose cells hold an index + name and a PCI bus id; their
    ``MiB / MiB`` memory is on a following row of the same block. Rows of a ``MIG devices:`` box
    are not GPUs. Processes come from the ``Processes:`` box, with or without ``GI CI`` columns.
    """
    lines = _clean_lines(text)
    messages: list[str] = []
    gpus: list[GpuReading] = []
    processes: list[GpuProcess] = []
    driver_version: str | None = None
    section = "preamble"  # preamble | gpus | mig | processes | other
    process_has_gi_ci = False
    process_rows_started = False
    current: dict[str, object] | None = None

    def finish_gpu() -> None:
        nonlocal current
        if current is not None:
            gpus.append(GpuReading(**current))  # type: ignore[arg-type]
            current = None

    saw_box = False
    for raw in lines:
        line = raw.rstrip()
        stripped = line.strip()
        if not stripped:
            continue
        if not (stripped.startswith("|") or stripped.startswith("+")):
            if saw_box and section not in ("preamble",) and not _looks_like_error([stripped]):
                continue
            if not _TIMESTAMP.match(stripped) and not _PROMPT_LINE.match(stripped):
                messages.append(stripped)
            continue
        saw_box = True
        if stripped.startswith("+"):
            finish_gpu()
            continue
        version = _DRIVER_VERSION.search(line)
        if version:
            driver_version = version.group(1)
            continue
        lowered = stripped.lower()
        if "processes:" in lowered:
            finish_gpu()
            section, process_rows_started, process_has_gi_ci = "processes", False, False
            continue
        if "mig devices:" in lowered:
            finish_gpu()
            section = "mig"
            continue
        if section == "preamble" and re.search(r"\bGPU\s+Name\b", stripped):
            section = "gpus"
            continue
        if section == "processes":
            if re.search(r"\bGI\b", stripped) and re.search(r"\bPID\b", stripped):
                process_has_gi_ci = True
            if stripped.startswith("|="):
                process_rows_started = True
                continue
            if process_rows_started:
                process = _parse_process_row(" ".join(_cells(line)), process_has_gi_ci)
                if process is not None:
                    processes.append(process)
            continue
        if section != "gpus" or stripped.startswith("|="):
            continue
        cells = _cells(line)
        first_row = _parse_gpu_first_row(cells)
        if first_row is not None:
            finish_gpu()
            current = first_row
            continue
        if current is not None and current.get("memory_used_mib") is None:
            for cell in cells:
                pair = _MEMORY_PAIR.search(cell)
                if pair:
                    current["memory_used_mib"] = int(pair.group(1))
                    current["memory_total_mib"] = int(pair.group(2))
                    break
    finish_gpu()
    if not gpus and not processes and not driver_version:
        if messages:
            return ParsedOutput(kind=OutputKind.ERROR, messages=(" ".join(messages)[:2000],))
        raise NvidiaSmiParseError("table output without any GPU row")
    return ParsedOutput(
        kind=OutputKind.TABLE,
        gpus=tuple(gpus),
        processes=tuple(processes),
        messages=tuple(messages),
        driver_version=driver_version,
        lists_processes=section == "processes" or bool(processes),
    )


def _parse_gpu_first_row(cells: Sequence[str]) -> dict[str, object] | None:
    if len(cells) < 2:
        return None
    match = re.match(r"^\s*(\d+)\s+(\S.*?)\s*$", cells[0])
    if not match or not _BUS_ID.search(cells[1]):
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


# --------------------------------------------------------------------------- CSV

_GPU_FIELDS = {"index", "uuid", "name", "pci.bus_id", "memory.used", "memory.total", "memory.free",
               "driver_version", "count", "gpu_name", "gpu_uuid", "gpu_bus_id"}
_FIELD_ALIASES = {
    "used_gpu_memory": "used_memory",
    "gpu_uuid": "uuid",
    "gpu_bus_id": "pci.bus_id",
    "pci.bus": "pci.bus_id",
    "busid": "pci.bus_id",
}
# Headerless shapes gpuwarden infers without being told the columns.
_SEED_GPU_COLUMNS = ("index", "memory.used")
_APPS_UUID_COLUMNS = ("gpu_uuid", "pid", "process_name", "used_memory")
_APPS_UUID_BUS_COLUMNS = ("gpu_uuid", "gpu_bus_id", "pid", "process_name", "used_memory")


def _field_name(header_cell: str) -> str:
    name = re.sub(r"\s*\[[^\]]*\]\s*$", "", header_cell.strip()).strip().lower()
    return name


def _command_columns(lines: Sequence[str]) -> tuple[str, ...] | None:
    for line in lines:
        match = _COMMAND_LINE.search(line)
        if match:
            return tuple(part.strip().lower() for part in match.group(1).split(",") if part.strip())
    return None


def _is_header(cells: Sequence[str]) -> bool:
    names = {_field_name(cell) for cell in cells}
    return bool(names & (_GPU_FIELDS | {"pid", "process_name", "used_memory", "used_gpu_memory", "memory.used"}))


def _csv_kind(data_lines: Sequence[str], columns: Sequence[str] | None) -> OutputKind:
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
    lines = [line for line in _clean_lines(text) if line.strip()]
    command = _command_columns(lines)
    lines = [line for line in lines if not _COMMAND_LINE.search(line)]
    if not lines:
        raise NvidiaSmiParseError("CSV output without rows")
    first = [cell.strip() for cell in lines[0].split(",")]
    if _is_header(first):
        names = tuple(_FIELD_ALIASES.get(_field_name(c), _field_name(c)) for c in first)
        rows = lines[1:]
    else:
        given = columns or command or _infer_columns(first)
        names = tuple(_FIELD_ALIASES.get(_field_name(c), _field_name(c)) for c in given)
        rows = lines
    if len(set(names)) != len(names):
        raise NvidiaSmiParseError(f"CSV columns named twice: {', '.join(names)}")
    is_apps = "pid" in names
    free_text = names.index("process_name") if "process_name" in names else (
        names.index("name") if "name" in names else None)
    gpus: list[GpuReading] = []
    processes: list[GpuProcess] = []
    for position, line in enumerate(rows):
        cells = _split_row(line, len(names), free_text)
        if len(cells) != len(names):
            raise NvidiaSmiParseError(
                f"CSV row {position + 1} has {len(cells)} cells where the columns are {len(names)}")
        record = dict(zip(names, cells, strict=True))
        if is_apps:
            pid = parse_int(record.get("pid"))
            if pid is None:
                raise NvidiaSmiParseError(f"CSV row {position + 1}: no PID in {record.get('pid')!r}")
            processes.append(GpuProcess(
                pid=pid,
                name=record.get("process_name") or "",
                type=None,
                used_memory_mib=parse_mib(record.get("used_memory")),
                gpu_index=parse_int(record.get("index")),
                gpu_uuid=None if missing(record.get("uuid")) else record.get("uuid"),
                gpu_bus_id=normalize_bus_id(record.get("pci.bus_id")),
            ))
        else:
            index = parse_int(record.get("index"))
            if index is None:
                if "index" not in record and len(rows) >= 1:
                    index = position
                else:
                    raise NvidiaSmiParseError(f"CSV row {position + 1}: no GPU index in {record.get('index')!r}")
            name = record.get("name")
            gpus.append(GpuReading(
                index=index,
                name=None if missing(name) else name,
                uuid=None if missing(record.get("uuid")) else record.get("uuid"),
                bus_id=normalize_bus_id(record.get("pci.bus_id")),
                memory_used_mib=parse_mib(record.get("memory.used")),
                memory_total_mib=parse_mib(record.get("memory.total")),
            ))
    return ParsedOutput(
        kind=OutputKind.CSV_APPS if is_apps else OutputKind.CSV_GPU,
        gpus=tuple(gpus),
        processes=tuple(processes),
        lists_processes=is_apps,
    )


# --------------------------------------------------------------------------- XML


def _text(element: ElementTree.Element | None, path: str) -> str | None:
    if element is None:
        return None
    found = element.find(path)
    if found is None or found.text is None:
        return None
    value = found.text.strip()
    return None if missing(value) else value


def parse_xml(text: str) -> ParsedOutput:
    """``nvidia-smi -q -x``. A GPU's index is the position of its ``<gpu>`` element; memory is its
    own ``<fb_memory_usage>``, never a ``<mig_device>``'s. Lines printed before the XML are kept."""
    cleaned = text.lstrip("\ufeff")
    start = cleaned.find("<?xml")
    if start < 0:
        start = cleaned.find("<nvidia_smi_log")
    end = cleaned.rfind("</nvidia_smi_log>")
    if start < 0 or end < 0:
        raise NvidiaSmiParseError("incomplete XML output (no <nvidia_smi_log> element)")
    if "<!ENTITY" in cleaned:
        raise NvidiaSmiParseError("XML output declares entities; refusing to expand them")
    prefix = [line.strip() for line in _clean_lines(cleaned[:start]) if line.strip()]
    body = cleaned[start:end + len("</nvidia_smi_log>")]
    try:
        root = ElementTree.fromstring(body)  # noqa: S314 - entities refused above; expat fetches no DTD
    except ElementTree.ParseError as error:
        raise NvidiaSmiParseError(f"malformed XML output: {error}") from None
    gpus: list[GpuReading] = []
    processes: list[GpuProcess] = []
    for position, gpu in enumerate(root.findall("gpu")):
        memory = gpu.find("fb_memory_usage")
        gpus.append(GpuReading(
            index=position,
            name=_text(gpu, "product_name"),
            uuid=_text(gpu, "uuid"),
            bus_id=normalize_bus_id(gpu.get("id") or _text(gpu, "pci/pci_bus_id")),
            memory_used_mib=parse_mib(_text(memory, "used")),
            memory_total_mib=parse_mib(_text(memory, "total")),
        ))
        for info in gpu.findall("processes/process_info"):
            pid = parse_int(_text(info, "pid"))
            if pid is None:
                continue
            processes.append(GpuProcess(
                pid=pid,
                name=(info.findtext("process_name") or "").strip(),
                type=_text(info, "type"),
                used_memory_mib=parse_mib(_text(info, "used_memory")),
                gpu_index=position,
            ))
    return ParsedOutput(
        kind=OutputKind.XML,
        gpus=tuple(gpus),
        processes=tuple(processes),
        messages=tuple(prefix),
        driver_version=_text(root, "driver_version"),
        lists_processes=True,
    )


# --------------------------------------------------------------------------- pmon, -L


def parse_pmon(text: str) -> ParsedOutput:
    """``nvidia-smi pmon -c 1``: processes by GPU index, without memory."""
    processes: list[GpuProcess] = []
    for line in _clean_lines(text):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = line.split()
        if len(parts) < 4:
            continue
        gpu, pid = parse_int(parts[0]), parse_int(parts[1])
        if gpu is None or pid is None:
            continue  # '-' rows: no process on that GPU
        processes.append(GpuProcess(pid=pid, name=" ".join(parts[9:]) if len(parts) > 9 else parts[-1],
                                    type=parts[2] if parts[2] != "-" else None, gpu_index=gpu))
    return ParsedOutput(kind=OutputKind.PMON, processes=tuple(processes), lists_processes=True)


def parse_list(text: str) -> ParsedOutput:
    """``nvidia-smi -L``: GPUs by index, name and uuid, without memory."""
    gpus = []
    for line in _clean_lines(text):
        match = _LIST_LINE.match(line.strip())
        if match:
            gpus.append(GpuReading(index=int(match.group(1)), name=match.group(2), uuid=match.group(3)))
    return ParsedOutput(kind=OutputKind.LIST, gpus=tuple(gpus))
