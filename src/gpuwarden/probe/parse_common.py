"""Helpers shared by every nvidia-smi parser: the error type, the placeholders nvidia-smi prints
where it has no value (``N/A``, ``[Not Supported]``, ...), MiB / integer cells, PCI bus ids, line
splitting and the error messages nvidia-smi prints instead of any output. Pure: text in, values out.

Every number is bounded (at most :data:`MAX_DIGITS` digits) before it is converted, and every
regular expression here runs in linear time, so no cell, however long, can make parsing slow or
raise anything but :class:`NvidiaSmiParseError`. :func:`checked_gpus` is the last step of every
parser: memory that cannot be right becomes unreadable, and a GPU index printed twice is not trusted.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import TypeVar

from gpuwarden.records import GpuReading

__all__ = [
    "BUS_ID",
    "MAX_DIGITS",
    "NvidiaSmiParseError",
    "checked_gpus",
    "clean_lines",
    "looks_like_error",
    "missing",
    "normalize_bus_id",
    "parse_int",
    "parse_mib",
    "read_memory",
    "shown",
]


class NvidiaSmiParseError(ValueError):
    """The text is not an nvidia-smi output gpuwarden can read."""


# No memory size, PID or GPU index nvidia-smi prints has more digits; longer is garbage (and
# Python's int() refuses more than 4300 digits with a bare ValueError).
MAX_DIGITS = 12
# Cells nvidia-smi prints where it has no value.
_MISSING = re.compile(r"^\[?\s*(n/?a|not supported|unknown error|gpu is lost|requested functionality"
                      r" has been deprecated|insufficient permissions|err!?)\s*\]?$|^$", re.IGNORECASE)
_DECIMAL = re.compile(rf"[0-9]{{1,{MAX_DIGITS}}}(?:\.[0-9]{{1,{MAX_DIGITS}}})?")  # whole cell: fullmatch
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
_T = TypeVar("_T")
BUS_ID = re.compile(r"\b([0-9A-Fa-f]{4,8}):([0-9A-Fa-f]{2}):([0-9A-Fa-f]{2})\.([0-9A-Fa-f])\b")


def missing(value: str | None) -> bool:
    """True for the placeholders nvidia-smi prints instead of a value."""
    return value is None or bool(_MISSING.match(value.strip()))


def parse_mib(value: str | None) -> int | None:
    """``'3193 MiB'``, ``'3193MiB'``, ``'3193'`` -> 3193; placeholders, negative numbers, numbers of
    more than :data:`MAX_DIGITS` digits and any other junk -> None."""
    if missing(value):
        return None
    assert value is not None
    text = value.strip()
    if text[-3:].lower() == "mib":
        text = text[:-3].rstrip()
    if not _DECIMAL.fullmatch(text):
        return None
    return round(float(text))


def parse_int(value: str | None) -> int | None:
    """A non-negative integer of at most :data:`MAX_DIGITS` ASCII digits, else None."""
    if missing(value):
        return None
    assert value is not None
    text = value.strip()
    return int(text) if text.isascii() and text.isdigit() and len(text) <= MAX_DIGITS else None


def shown(value: str, limit: int = 24) -> str:
    """``value`` quoted for a message, cut short if long (a cell may hold thousands of characters)."""
    return repr(value) if len(value) <= limit else repr(value[:limit]) + f"... ({len(value)} characters)"


def read_memory(index: int, used_text: str | None, total_text: str | None) -> tuple[int | None, int | None,
                                                                                   list[str]]:
    """A GPU's memory used and total from their cells, and what was wrong with them. A cell that is
    neither a placeholder nor a MiB amount (``-774MiB``, 16,000 digits) is unreadable: None, never a
    guess, so the GPU is never taken for free. (Used above total is :func:`checked_gpus`' concern.)"""
    messages: list[str] = []
    values: list[int | None] = []
    for what, text in (("used", used_text), ("total", total_text)):
        value = parse_mib(text)
        if value is None and not missing(text):
            assert text is not None
            messages.append(f"GPU {index}: memory {what} {shown(text.strip())} is not a MiB amount; "
                            "treated as unreadable")
        values.append(value)
    return values[0], values[1], messages


def checked_gpus(gpus: Iterable[GpuReading]) -> tuple[tuple[GpuReading, ...], tuple[str, ...]]:
    """The GPUs of ONE output made safe to classify, and what was wrong with them.

    Negative memory is unreadable; memory used above the total is unreadable. A GPU index printed
    more than once is one GPU whose reading is not trusted: a single reading, at the first copy's
    place, with memory used unreadable (so the GPU is ``unavailable``, never loadable) and only the
    fields every copy agrees on."""
    messages: list[str] = []
    copies: dict[int, list[GpuReading]] = {}
    for gpu in gpus:
        copies.setdefault(gpu.index, []).append(_checked_memory(gpu, messages))
    result: list[GpuReading] = []
    for index, readings in copies.items():
        if len(readings) == 1:
            result.append(readings[0])
            continue
        messages.append(f"GPU {index} is listed {len(readings)} times in one nvidia-smi output; "
                        "its reading is not trusted (memory use treated as unreadable)")
        result.append(GpuReading(
            index=index,
            name=_agreed(g.name for g in readings),
            uuid=_agreed(g.uuid for g in readings),
            bus_id=_agreed(g.bus_id for g in readings),
            memory_used_mib=None,
            memory_total_mib=_agreed(g.memory_total_mib for g in readings),
        ))
    return tuple(result), tuple(messages)


def _checked_memory(gpu: GpuReading, messages: list[str]) -> GpuReading:
    used, total = gpu.memory_used_mib, gpu.memory_total_mib
    if total is not None and total < 0:
        messages.append(f"GPU {gpu.index}: memory total {total} MiB is negative; treated as unreadable")
        total = None
    if used is not None and used < 0:
        messages.append(f"GPU {gpu.index}: memory used {used} MiB is negative; treated as unreadable")
        used = None
    if used is not None and total is not None and used > total:
        messages.append(f"GPU {gpu.index}: memory used {used} MiB is above its total {total} MiB; "
                        "memory use treated as unreadable")
        used = None
    if (used, total) == (gpu.memory_used_mib, gpu.memory_total_mib):
        return gpu
    return replace(gpu, memory_used_mib=used, memory_total_mib=total)


def _agreed(values: Iterable[_T | None]) -> _T | None:
    """The one value every copy has, else None."""
    distinct = set(values)
    return distinct.pop() if len(distinct) == 1 else None


def normalize_bus_id(bus_id: str | None) -> str | None:
    """``00000000:0C:00.0`` and ``0000:0c:00.0`` both -> ``0000:0C:00.0`` (domain to 4 digits)."""
    if not bus_id:
        return None
    match = BUS_ID.search(bus_id)
    if not match:
        return None
    domain, bus, device, function = match.groups()
    return f"{int(domain, 16):04X}:{bus.upper()}:{device.upper()}.{function.upper()}"


def clean_lines(text: str) -> list[str]:
    """The lines of ``text``, without a byte-order mark, whatever its line endings."""
    text = text.lstrip("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
    return text.split("\n")


def looks_like_error(lines: Sequence[str]) -> bool:
    """True for a few lines holding one of the messages nvidia-smi prints when it cannot report."""
    lowered = " ".join(lines).lower()
    return len(lines) <= 20 and any(pattern in lowered for pattern in _ERROR_PATTERNS)
