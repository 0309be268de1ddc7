"""Helpers shared by every nvidia-smi parser: the error type, the placeholders nvidia-smi prints
where it has no value (``N/A``, ``[Not Supported]``, ...), MiB / integer cells, PCI bus ids, line
splitting and the error messages nvidia-smi prints instead of any output. Pure: text in, values out.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

__all__ = [
    "BUS_ID",
    "NvidiaSmiParseError",
    "clean_lines",
    "looks_like_error",
    "missing",
    "normalize_bus_id",
    "parse_int",
    "parse_mib",
]


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
BUS_ID = re.compile(r"\b([0-9A-Fa-f]{4,8}):([0-9A-Fa-f]{2}):([0-9A-Fa-f]{2})\.([0-9A-Fa-f])\b")


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
