"""Parsers for ``nvidia-smi -q -x`` (XML), ``nvidia-smi pmon -c 1`` and ``nvidia-smi -L``.

XML is read by element names; ``pmon`` rows are split on whitespace; ``-L`` lines are matched whole.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ElementTree

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
from gpuwarden.records import MAX_GPU_INDEX, GpuProcess, GpuReading, OutputKind, ParsedOutput

__all__ = ["LIST_LINE", "parse_list", "parse_pmon", "parse_xml"]

# One line of ``nvidia-smi -L``.
LIST_LINE = re.compile(r"^GPU ([0-9]{1,12}): (.*?) \(UUID: (\S+)\)\s*$")
# Characters XML 1.0 forbids (all C0 controls but tab, newline and carriage return; surrogates;
# U+FFFE, U+FFFF). nvidia-smi prints a process name as it is, so one such character would make the
# whole document unreadable: each becomes U+FFFD instead.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
_MISSING_NAMED = 16  # at most this many missing GPUs are named in a message
# A GPU's own power readings: <gpu_power_readings> (drivers 530+), else <power_readings>; never
# <gpu_memory_power_readings> or <module_power_readings>. Within one, the first value present wins.
_POWER_SECTIONS = ("gpu_power_readings", "power_readings")
_POWER_DRAW = ("power_draw", "average_power_draw", "instant_power_draw")
_POWER_LIMIT = ("current_power_limit", "enforced_power_limit", "power_limit")


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
    """``nvidia-smi -q -x``. GPUs are numbered as :func:`_gpu_indexes` says; memory is a GPU's own
    ``<fb_memory_usage>``, never a ``<mig_device>``'s. Lines printed before the XML are kept."""
    prefix, root = _xml_root(text)
    blocks = root.findall("gpu")
    indexes, messages = _gpu_indexes(root, blocks)
    gpus: list[GpuReading] = []
    processes: list[GpuProcess] = []
    for index, gpu in zip(indexes, blocks, strict=True):
        memory = gpu.find("fb_memory_usage")
        used, total, notes = read_memory(index, _text(memory, "used"), _text(memory, "total"))
        messages.extend(notes)
        draw, limit = _xml_power(gpu)
        gpus.append(GpuReading(
            index=index,
            name=_text(gpu, "product_name"),
            uuid=_text(gpu, "uuid"),
            bus_id=normalize_bus_id(gpu.get("id") or _text(gpu, "pci/pci_bus_id")),
            memory_used_mib=used,
            memory_total_mib=total,
            utilization_percent=parse_percent(_text(gpu, "utilization/gpu_util")),
            temperature_c=parse_celsius(_text(gpu, "temperature/gpu_temp")),
            power_draw_w=draw,
            power_limit_w=limit,
            fan_percent=parse_percent(_text(gpu, "fan_speed"), MAX_FAN_PERCENT),
        ))
        processes.extend(_xml_processes(gpu, index))
    checked, checks = checked_gpus(gpus)
    return ParsedOutput(
        kind=OutputKind.XML,
        gpus=checked,
        processes=tuple(processes),
        messages=(*prefix, *messages, *checks),
        driver_version=_text(root, "driver_version"),
        lists_processes=True,
    )


def _xml_root(text: str) -> tuple[list[str], ElementTree.Element]:
    """The lines printed before the XML, and its root. Entities are refused; characters XML 1.0
    forbids (a control character in a process name) become U+FFFD rather than break the document."""
    cleaned = text.lstrip("\ufeff")
    start = cleaned.find("<?xml")
    if start < 0:
        start = cleaned.find("<nvidia_smi_log")
    end = cleaned.rfind("</nvidia_smi_log>")
    if start < 0 or end < 0:
        raise NvidiaSmiParseError("incomplete XML output (no <nvidia_smi_log> element)")
    if "<!ENTITY" in cleaned:
        raise NvidiaSmiParseError("XML output declares entities; refusing to expand them")
    prefix = [line.strip() for line in clean_lines(cleaned[:start]) if line.strip()]
    body = _NOT_XML.sub("\ufffd", cleaned[start:end + len("</nvidia_smi_log>")])
    try:
        root = ElementTree.fromstring(body)  # noqa: S314 - entities refused above; expat fetches no DTD
    except ElementTree.ParseError as error:
        raise NvidiaSmiParseError(f"malformed XML output: {error}") from None
    return prefix, root


def _xml_power(gpu: ElementTree.Element) -> tuple[float | None, float | None]:
    """A GPU's power draw and enforced limit in watts (None where not reported)."""
    sections = [section for section in (gpu.find(path) for path in _POWER_SECTIONS) if section is not None]
    draws = (parse_watts(_text(section, name)) for section in sections for name in _POWER_DRAW)
    limits = (parse_watts(_text(section, name), zero_allowed=False) for section in sections for name in _POWER_LIMIT)
    return next((w for w in draws if w is not None), None), next((w for w in limits if w is not None), None)


def _gpu_indexes(root: ElementTree.Element, blocks: list[ElementTree.Element]) -> tuple[list[int], list[str]]:
    """The nvidia-smi index of each ``<gpu>`` block, and a message if some GPU is missing.

    The XML does not print the index. When it lists every attached GPU (``<attached_gpus>``, or no
    count at all), a GPU's index is its position. When some are missing (a lost GPU), positions would
    renumber the rest onto other GPUs: then each GPU's ``<minor_number>`` (its /dev/nvidiaN) is its
    index, if every listed GPU has a distinct one below the count; otherwise the output is refused."""
    count_text = _text(root, "attached_gpus")
    count = parse_int(count_text)
    if count_text is None or count == len(blocks):
        return list(range(len(blocks))), []
    if count is None or count > MAX_GPU_INDEX + 1 or len(blocks) > count:
        raise NvidiaSmiParseError(f"XML output lists {len(blocks)} GPUs where attached_gpus says "
                                  f"{shown(count_text)}")
    minors = [parse_int(_text(gpu, "minor_number")) for gpu in blocks]
    known = [minor for minor in minors if minor is not None and minor < count]
    if len(known) != len(blocks) or len(set(known)) != len(known):
        raise NvidiaSmiParseError(
            f"XML output lists {len(blocks)} of {count} attached GPUs, and their minor numbers do not "
            "say which ones: refusing to guess GPU indexes")
    absent = [str(index) for index in range(count) if index not in set(known)]
    named = ", ".join(absent[:_MISSING_NAMED]) + (f" and {len(absent) - _MISSING_NAMED} more"
                                                   if len(absent) > _MISSING_NAMED else "")
    return known, [f"nvidia-smi counts {count} GPUs but printed {len(blocks)}: GPU {named} missing "
                   "(GPU indexes taken from minor numbers)"]


def _xml_processes(gpu: ElementTree.Element, index: int) -> list[GpuProcess]:
    processes: list[GpuProcess] = []
    for info in gpu.findall("processes/process_info"):
        pid = parse_int(_text(info, "pid"))
        if pid is None:
            continue
        processes.append(GpuProcess(
            pid=pid,
            name=(info.findtext("process_name") or "").strip(),
            type=_text(info, "type"),
            used_memory_mib=parse_mib(_text(info, "used_memory")),
            gpu_index=index,
        ))
    return processes


# --------------------------------------------------------------------------- pmon, -L


def parse_pmon(text: str) -> ParsedOutput:
    """``nvidia-smi pmon -c 1``: processes by GPU index, without memory."""
    processes: list[GpuProcess] = []
    for line in clean_lines(text):
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
    for line in clean_lines(text):
        match = LIST_LINE.match(line.strip())
        if match:
            gpus.append(GpuReading(index=int(match.group(1)), name=match.group(2), uuid=match.group(3)))
    checked, messages = checked_gpus(gpus)
    return ParsedOutput(kind=OutputKind.LIST, gpus=checked, messages=messages)
