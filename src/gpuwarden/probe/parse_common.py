"""Helpers shared by every nvidia-smi parser: the error type, the placeholders nvidia-smi prints
where it has no value (``N/A``, ``[Not Supported]``, ...), MiB / integer cells, telemetry cells
(percent, degrees C, watts: None outside sane bounds), PCI bus ids, line splitting and the error
messages nvidia-smi prints instead of any output. Pure: text in, values out.

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
    "MAX_FAN_PERCENT",
    "NvidiaSmiParseError",
    "checked_gpus",
    "clean_lines",
    "looks_like_error",
    "missing",
    "normalize_bus_id",
    "parse_celsius",
    "parse_int",
    "parse_mib",
    "parse_percent",
    "parse_watts",
    "read_memory",
    "sane_celsius",
    "sane_percent",
    "sane_watts",
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
# Telemetry bounds: a value outside them is junk (an error code, a sentinel such as 65535), never shown.
MAX_UTILIZATION_PERCENT = 100
MAX_FAN_PERCENT = 200  # nvidia-smi: "This value may exceed 100% in certain cases"
MAX_TEMPERATURE_C = 150  # GPUs shut down near 100 C; 255 or 65535 are sentinels
MAX_POWER_W = 10_000.0  # a whole 8-GPU board draws less
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


def _number_with_unit(value: str | None, unit: str, *, unit_required: bool) -> float | None:
    """``'54C'``, ``'40 C'``, ``'122.98 W'``, ``'3%'`` (and without the unit unless ``unit_required``)
    -> the number; placeholders, signs, exponents, other units and any other junk -> None."""
    if missing(value):
        return None
    assert value is not None
    text = value.strip()
    if text[-len(unit):].lower() == unit.lower():
        text = text[:-len(unit)].rstrip()
    elif unit_required:
        return None
    return float(text) if _DECIMAL.fullmatch(text) else None


def _bounded(value: object, low: float, high: float) -> float | None:
    """A real, finite number within [low, high], else None (bools and NaN included)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value) if not isinstance(value, int) or abs(value) <= 2**53 else float("inf")
    return number if low <= number <= high else None


def sane_percent(value: object, maximum: int = MAX_UTILIZATION_PERCENT) -> int | None:
    """A percentage from 0 to ``maximum``, rounded to an integer; else None."""
    number = _bounded(value, 0, maximum)
    return round(number) if number is not None else None


def sane_celsius(value: object) -> int | None:
    """A GPU temperature from 0 to :data:`MAX_TEMPERATURE_C` degrees C, rounded; else None."""
    number = _bounded(value, 0, MAX_TEMPERATURE_C)
    return round(number) if number is not None else None


def sane_watts(value: object, *, zero_allowed: bool = True) -> float | None:
    """A power from 0 (or above 0) to :data:`MAX_POWER_W` watts, to the milliwatt; else None."""
    number = _bounded(value, 0, MAX_POWER_W)
    if number is None or (number == 0 and not zero_allowed):
        return None
    return round(number, 3)


def parse_percent(value: str | None, maximum: int = MAX_UTILIZATION_PERCENT, *,
                  unit_required: bool = False) -> int | None:
    """``'3%'``, ``'0 %'``, ``'86'`` -> an integer percentage; placeholders and junk -> None."""
    return sane_percent(_number_with_unit(value, "%", unit_required=unit_required), maximum)


def parse_celsius(value: str | None, *, unit_required: bool = False) -> int | None:
    """``'54C'``, ``'40 C'``, ``'36'`` -> degrees C; placeholders and junk -> None."""
    return sane_celsius(_number_with_unit(value, "C", unit_required=unit_required))


def parse_watts(value: str | None, *, unit_required: bool = False, zero_allowed: bool = True) -> float | None:
    """``'23W'``, ``'122.98 W'``, ``'700.00'`` -> watts; placeholders and junk -> None."""
    return sane_watts(_number_with_unit(value, "W", unit_required=unit_required), zero_allowed=zero_allowed)


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
            utilization_percent=_agreed(g.utilization_percent for g in readings),
            temperature_c=_agreed(g.temperature_c for g in readings),
            power_draw_w=_agreed(g.power_draw_w for g in readings),
            power_limit_w=_agreed(g.power_limit_w for g in readings),
            fan_percent=_agreed(g.fan_percent for g in readings),
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
