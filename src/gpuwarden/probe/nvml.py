"""NVML source (``gpu_source = "nvml"``): the same facts as ``nvidia-smi -q -x`` in microseconds, through
the official binding (nvidia-ml-py, imported as ``pynvml``).

Memory comes from ``nvmlDeviceGetMemoryInfo(handle, version=nvmlMemory_v2)``: the v1 call counts the
driver's reserved memory as used (615 MiB on an idle H200, driver 580) and would mark every idle GPU
occupied; v2 matches nvidia-smi. A binding or driver without v2 is not used at all. When NVML
cannot start (no library, driver down), the snapshot comes from nvidia-smi instead, whose output
says why in words a person understands. Telemetry (utilization, temperature, power, fan) is read call
by call: a call this GPU does not support leaves its field None and the rest are still read.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from typing import Any

from gpuwarden.probe.assemble import build_snapshot
from gpuwarden.probe.parse import normalize_bus_id
from gpuwarden.probe.parse_common import MAX_FAN_PERCENT, sane_celsius, sane_percent, sane_watts
from gpuwarden.probe.users import ProcessLookup, snapshot_with_users
from gpuwarden.records import GpuProcess, GpuReading, OutputKind, ParsedOutput, Snapshot

MIB = 1024 * 1024
MILLIWATTS_PER_WATT = 1000
NVML_TEMPERATURE_GPU = 0  # pynvml.NVML_TEMPERATURE_GPU, for a binding that does not name it


class NvmlUnavailable(Exception):
    """NVML cannot be used here (no library, no driver, a binding without the v2 memory call)."""


def _text(value: Any) -> str:
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)


def _mib(value: Any) -> int | None:
    if value is None or not isinstance(value, int) or value < 0 or value >= 2**63:
        return None  # NVML_VALUE_NOT_AVAILABLE (2**64 - 1) or a binding that already made it None
    return -(-value // MIB)  # rounded up, as nvidia-smi showed (2575 MiB where floor gives 2574 on an H200)


def _watts(milliwatts: Any, *, zero_allowed: bool = True) -> float | None:
    if isinstance(milliwatts, bool) or not isinstance(milliwatts, int):
        return None
    return sane_watts(milliwatts / MILLIWATTS_PER_WATT, zero_allowed=zero_allowed)


def _optional(call: Callable[[], Any]) -> Any:
    """A telemetry value, or None where NVML cannot give it (NotSupported on this GPU, no permission,
    a binding without the call). Not a warning: many GPUs never report some of these (no fan)."""
    try:
        return call()
    except Exception:  # noqa: BLE001 - NVMLError of any kind, or AttributeError from an old binding
        return None


def _with_telemetry(reading: GpuReading, nvml: Any, handle: Any) -> GpuReading:
    """Utilization, temperature, power draw and enforced limit, fan: each None where NVML fails."""
    sensor = getattr(nvml, "NVML_TEMPERATURE_GPU", NVML_TEMPERATURE_GPU)
    rates = _optional(lambda: nvml.nvmlDeviceGetUtilizationRates(handle))
    return replace(
        reading,
        utilization_percent=sane_percent(getattr(rates, "gpu", None)),
        temperature_c=sane_celsius(_optional(lambda: nvml.nvmlDeviceGetTemperature(handle, sensor))),
        power_draw_w=_watts(_optional(lambda: nvml.nvmlDeviceGetPowerUsage(handle))),
        power_limit_w=_watts(_optional(lambda: nvml.nvmlDeviceGetEnforcedPowerLimit(handle)), zero_allowed=False),
        fan_percent=sane_percent(_optional(lambda: nvml.nvmlDeviceGetFanSpeed(handle)), MAX_FAN_PERCENT),
    )


class NvmlSource:
    """Reads every GPU and its processes through NVML. ``fallback`` takes the snapshot whenever NVML
    fails as a whole; a single GPU that fails (lost) is reported unreadable, the others as read."""

    def __init__(self, *, lookup: ProcessLookup, fallback: Any, clock: Callable[[], datetime],
                 nvml: Any = None) -> None:
        self._lookup = lookup
        self._fallback = fallback
        self._clock = clock
        self._nvml = nvml
        self._initialized = False

    @property
    def description(self) -> str:
        return "nvml"

    def _api(self) -> Any:
        if self._nvml is None:
            try:
                self._nvml = importlib.import_module("pynvml")
            except ImportError:
                raise NvmlUnavailable("the nvidia-ml-py package is not installed") from None
        if not self._initialized:
            try:
                self._nvml.nvmlInit()
            except Exception as error:  # noqa: BLE001 - NVMLError or OSError from the loader
                raise NvmlUnavailable(f"nvmlInit failed: {error}") from None
            if not hasattr(self._nvml, "nvmlMemory_v2"):
                raise NvmlUnavailable("this nvidia-ml-py has no nvmlMemory_v2: memory would count reserved memory")
            self._initialized = True
        return self._nvml

    def snapshot(self) -> Snapshot:
        try:
            parsed = self._read()
        except NvmlUnavailable as error:
            snapshot: Snapshot = self._fallback.snapshot()
            return replace(snapshot, warnings=(*snapshot.warnings, f"NVML not used ({error}); read nvidia-smi"))
        snapshot = build_snapshot([parsed], self._clock(), self.description)
        return snapshot_with_users(snapshot, self._lookup)

    def _read(self) -> ParsedOutput:
        nvml = self._api()
        try:
            count = int(nvml.nvmlDeviceGetCount())
            driver = _text(nvml.nvmlSystemGetDriverVersion())
        except Exception as error:  # noqa: BLE001 - any NVML failure: let nvidia-smi explain it
            self._initialized = False
            raise NvmlUnavailable(str(error)) from None
        gpus: list[GpuReading] = []
        processes: list[GpuProcess] = []
        messages: list[str] = []
        for index in range(count):
            try:
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
            except Exception as error:  # noqa: BLE001
                messages.append(f"GPU {index}: {error}")
                gpus.append(GpuReading(index=index))
                continue
            gpus.append(self._gpu(nvml, handle, index, messages))
            processes.extend(self._processes(nvml, handle, index))
        if not count:
            messages.append("No devices were found (NVML)")
        if gpus and all(gpu.memory_used_mib is None for gpu in gpus):
            raise NvmlUnavailable("no GPU's memory could be read through NVML: " + "; ".join(messages[:3]))
        return ParsedOutput(kind=OutputKind.NVML, gpus=tuple(gpus), processes=tuple(processes),
                            messages=tuple(messages), driver_version=driver, lists_processes=True)

    @staticmethod
    def _gpu(nvml: Any, handle: Any, index: int, messages: list[str]) -> GpuReading:
        def read(call: Callable[[], Any]) -> Any:
            try:
                return call()
            except Exception as error:  # noqa: BLE001
                messages.append(f"GPU {index}: {error}")
                return None

        memory = read(lambda: nvml.nvmlDeviceGetMemoryInfo(handle, version=nvml.nvmlMemory_v2))
        pci = read(lambda: nvml.nvmlDeviceGetPciInfo(handle))
        name = read(lambda: nvml.nvmlDeviceGetName(handle))
        uuid = read(lambda: nvml.nvmlDeviceGetUUID(handle))
        reading = GpuReading(
            index=index,
            name=_text(name) if name is not None else None,
            uuid=_text(uuid) if uuid is not None else None,
            bus_id=normalize_bus_id(_text(pci.busId)) if pci is not None else None,
            memory_used_mib=_mib(memory.used) if memory is not None else None,
            memory_total_mib=_mib(memory.total) if memory is not None else None,
        )
        return _with_telemetry(reading, nvml, handle)

    @staticmethod
    def _processes(nvml: Any, handle: Any, index: int) -> list[GpuProcess]:
        found: dict[int, tuple[set[str], int | None]] = {}
        for kind, call in (("C", nvml.nvmlDeviceGetComputeRunningProcesses),
                           ("G", nvml.nvmlDeviceGetGraphicsRunningProcesses)):
            try:
                entries = call(handle)
            except Exception:  # noqa: BLE001, S112 - not supported on this GPU/driver: none listed
                continue
            for entry in entries:
                kinds, used = found.get(int(entry.pid), (set(), None))
                kinds.add(kind)
                found[int(entry.pid)] = (kinds, used if used is not None else _mib(entry.usedGpuMemory))
        result = []
        for pid, (kinds, used) in found.items():
            try:
                name = _text(nvml.nvmlSystemGetProcessName(pid))
            except Exception:  # noqa: BLE001 - gone, or not ours to see
                name = "Insufficient Permissions"
            result.append(GpuProcess(pid=pid, name=name, type="C+G" if len(kinds) == 2 else kinds.pop(),
                                     used_memory_mib=used, gpu_index=index))
        return result
