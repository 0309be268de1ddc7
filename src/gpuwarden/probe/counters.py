"""Windows' GPU performance counters, read through PDH (``pdh.dll``, through ctypes), and the source
that fills per-process memory from them where nvidia-smi has none (WDDM). The matching is pure:
:mod:`gpuwarden.probe.wddm`.

Read from recorded counter output only, so far: unverified on real hardware until seen there.
"""

from __future__ import annotations

import ctypes
from dataclasses import replace
from typing import Any, Protocol

from gpuwarden.probe.base import GpuSource
from gpuwarden.probe.wddm import COUNTER_PATH, fill_process_memory, parse_samples
from gpuwarden.records import Snapshot

PDH_FMT_LARGE = 0x00000400
PDH_MORE_DATA = 0x800007D2
MAX_BUFFER_BYTES = 64 * 1024 * 1024


class CountersUnavailable(Exception):
    """The counters cannot be read here (not Windows, no such counter set, PDH failed)."""


class CounterReader(Protocol):
    def read(self) -> list[tuple[str, float]]: ...


class _Value(ctypes.Structure):
    _fields_ = [("status", ctypes.c_uint32), ("large", ctypes.c_longlong)]  # the union's 64-bit member


class _Item(ctypes.Structure):
    _fields_ = [("name", ctypes.c_wchar_p), ("value", _Value)]


class PdhCounters:
    """``\\GPU Process Memory(*)\\Dedicated Usage`` for every instance, once per call."""

    def read(self) -> list[tuple[str, float]]:
        loader = getattr(ctypes, "WinDLL", None)  # Windows only
        if loader is None:
            raise CountersUnavailable("performance counters are a Windows facility")
        try:
            pdh = loader("pdh")
        except OSError as error:
            raise CountersUnavailable(f"pdh.dll: {error}") from None
        query = ctypes.c_void_p()
        self._check(pdh.PdhOpenQueryW(None, None, ctypes.byref(query)), "PdhOpenQuery")
        try:
            counter = ctypes.c_void_p()
            self._check(pdh.PdhAddEnglishCounterW(query, COUNTER_PATH, None, ctypes.byref(counter)), "PdhAddCounter")
            self._check(pdh.PdhCollectQueryData(query), "PdhCollectQueryData")
            return self._values(pdh, counter)
        finally:
            pdh.PdhCloseQuery(query)

    def _values(self, pdh: Any, counter: ctypes.c_void_p) -> list[tuple[str, float]]:
        size, count = ctypes.c_uint32(0), ctypes.c_uint32(0)
        status = pdh.PdhGetFormattedCounterArrayW(counter, PDH_FMT_LARGE, ctypes.byref(size), ctypes.byref(count), None)
        if status & 0xFFFFFFFF != PDH_MORE_DATA or not 0 < size.value <= MAX_BUFFER_BYTES:
            self._check(status, "PdhGetFormattedCounterArray")
            return []
        buffer = ctypes.create_string_buffer(size.value)
        self._check(pdh.PdhGetFormattedCounterArrayW(counter, PDH_FMT_LARGE, ctypes.byref(size), ctypes.byref(count),
                                                     buffer), "PdhGetFormattedCounterArray")
        items = ctypes.cast(buffer, ctypes.POINTER(_Item))
        return [(items[i].name or "", float(items[i].value.large)) for i in range(count.value)
                if items[i].value.status in (0, 1)]  # PDH_CSTATUS_VALID_DATA, PDH_CSTATUS_NEW_DATA

    @staticmethod
    def _check(status: int, call: str) -> None:
        if status & 0xFFFFFFFF:
            raise CountersUnavailable(f"{call} failed (0x{status & 0xFFFFFFFF:08X})")


class WindowsMemorySource:
    """Another source's snapshots, with each process's memory filled in from Windows' counters where
    nvidia-smi printed N/A (WDDM). The counters are read only when some value is missing."""

    def __init__(self, inner: GpuSource, counters: CounterReader | None = None) -> None:
        self._inner = inner
        self._counters = counters or PdhCounters()

    @property
    def description(self) -> str:
        return self._inner.description

    @property
    def inner(self) -> GpuSource:
        return self._inner

    def snapshot(self) -> Snapshot:
        snapshot = self._inner.snapshot()
        if snapshot.error or all(p.used_memory_mib is not None for p in snapshot.processes):
            return snapshot
        try:
            samples = parse_samples(self._counters.read())
        except Exception as error:  # noqa: BLE001 - an optional extra must never make the GPUs unreadable
            note = f"per-process memory unknown (WDDM): Windows' GPU counters cannot be read: {error}"
            return replace(snapshot, warnings=(*snapshot.warnings, note))
        return fill_process_memory(snapshot, samples)
