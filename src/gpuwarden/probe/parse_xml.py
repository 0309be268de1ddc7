"""Parsers for ``nvidia-smi -q -x`` (XML), ``nvidia-smi pmon -c 1`` and ``nvidia-smi -L``.

XML is read by element names; ``pmon`` rows are split on whitespace; ``-L`` lines are matched whole.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ElementTree

from gpuwarden.probe.parse_common import (
    NvidiaSmiParseError,
    clean_lines,
    missing,
    normalize_bus_id,
    parse_int,
    parse_mib,
)
from gpuwarden.records import GpuProcess, GpuReading, OutputKind, ParsedOutput

__all__ = ["LIST_LINE", "parse_list", "parse_pmon", "parse_xml"]

# One line of ``nvidia-smi -L``.
LIST_LINE = re.compile(r"^GPU (\d+): (.*?) \(UUID: (\S+)\)\s*$")


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
    prefix = [line.strip() for line in clean_lines(cleaned[:start]) if line.strip()]
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
    return ParsedOutput(kind=OutputKind.LIST, gpus=tuple(gpus))
