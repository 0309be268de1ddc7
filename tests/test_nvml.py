"""The NVML source, driven by a fake NVML binding (the same function names as pynvml)."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from gpuwarden.classify import classify
from gpuwarden.probe.counters import WindowsMemorySource
from gpuwarden.probe.nvml import NvmlSource
from gpuwarden.probe.sources import SmiSource, make_source
from gpuwarden.probe.users import PsutilLookup
from gpuwarden.records import GpuState
from tests.conftest import FakeSmi, make_settings

MIB = 1024 * 1024
NOT_AVAILABLE = 2**64 - 1


class NVMLError(Exception):
    pass


class FakeNvml:
    """Two GPUs: 0 idle (v1 would say 615 MiB used), 1 with a compute, a graphics and a C+G process.
    Telemetry: GPU 0 reports everything; GPU 1 (a datacenter GPU) has no fan and its utilization
    call fails. A telemetry value that is an Exception is raised by its call."""

    nvmlMemory_v2 = 0x02000028

    def __init__(self, *, init_error: bool = False, lost: int | None = None, v2: bool = True) -> None:
        self.init_error, self.lost, self.v2, self.inits = init_error, lost, v2, 0
        self.gpus = [
            {"used": 0, "reserved": 615 * MIB, "compute": [], "graphics": []},
            {"used": 3192 * MIB + 1, "reserved": 616 * MIB,
             "compute": [SimpleNamespace(pid=701, usedGpuMemory=2566 * MIB),
                         SimpleNamespace(pid=703, usedGpuMemory=NOT_AVAILABLE)],
             "graphics": [SimpleNamespace(pid=702, usedGpuMemory=None),
                          SimpleNamespace(pid=703, usedGpuMemory=10 * MIB)]},
        ]
        self.telemetry: list[dict[str, Any]] = [
            {"util": 7, "temp": 41, "power_mw": 61234, "limit_mw": 450000, "fan": 30},
            {"util": NVMLError("Not Supported"), "temp": 36, "power_mw": 122990, "limit_mw": 700000,
             "fan": NVMLError("Not Supported")},
        ]
        self.sensors: list[int] = []
        self.NVML_TEMPERATURE_GPU = 0

    def _value(self, handle: int, key: str) -> Any:
        if handle == self.lost:
            raise NVMLError("GPU is lost")
        value = self.telemetry[handle][key]
        if isinstance(value, Exception):
            raise value
        return value

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> Any:
        return SimpleNamespace(gpu=self._value(handle, "util"), memory=3)

    def nvmlDeviceGetTemperature(self, handle: int, sensor: int) -> Any:
        self.sensors.append(sensor)
        return self._value(handle, "temp")

    def nvmlDeviceGetPowerUsage(self, handle: int) -> Any:
        return self._value(handle, "power_mw")

    def nvmlDeviceGetEnforcedPowerLimit(self, handle: int) -> Any:
        return self._value(handle, "limit_mw")

    def nvmlDeviceGetFanSpeed(self, handle: int) -> Any:
        return self._value(handle, "fan")

    def nvmlInit(self) -> None:
        self.inits += 1
        if self.init_error:
            raise NVMLError("Driver Not Loaded")

    def nvmlSystemGetDriverVersion(self) -> str:
        return "580.159.04"

    def nvmlDeviceGetCount(self) -> int:
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetMemoryInfo(self, handle: int, version: int | None = None) -> Any:
        if handle == self.lost:
            raise NVMLError("GPU is lost")
        if version != self.nvmlMemory_v2 or not self.v2:
            raise NVMLError("Function Not Found")
        gpu = self.gpus[handle]
        return SimpleNamespace(used=gpu["used"], total=143771 * MIB, reserved=gpu["reserved"])

    def nvmlDeviceGetPciInfo(self, handle: int) -> Any:
        return SimpleNamespace(busId=f"00000000:{handle + 6:02X}:00.0".encode())

    def nvmlDeviceGetName(self, handle: int) -> bytes:
        return b"NVIDIA H200"

    def nvmlDeviceGetUUID(self, handle: int) -> str:
        return f"GPU-{handle:08d}"

    def nvmlDeviceGetComputeRunningProcesses(self, handle: int) -> list[Any]:
        return self.gpus[handle]["compute"]

    def nvmlDeviceGetGraphicsRunningProcesses(self, handle: int) -> list[Any]:
        return self.gpus[handle]["graphics"]

    def nvmlSystemGetProcessName(self, pid: int) -> str:
        if pid == 702:
            raise NVMLError("No permission")
        return {701: "python3", 703: "C:\\Windows\\explorer.exe"}[pid]


def source(nvml: FakeNvml, fallback: Any = None) -> NvmlSource:
    return NvmlSource(lookup=PsutilLookup(), fallback=fallback, clock=lambda: datetime.now(UTC), nvml=nvml)


def test_reads_gpus_and_processes_with_v2_memory() -> None:
    snapshot = source(FakeNvml()).snapshot()  # GPU 1: 3192 MiB + 1 byte -> 3193 MiB, as nvidia-smi rounds
    assert snapshot.error is None and snapshot.driver_version == "580.159.04"
    assert [(g.index, g.name, g.uuid, g.bus_id, g.memory_used_mib, g.memory_total_mib) for g in snapshot.gpus] == [
        (0, "NVIDIA H200", "GPU-00000000", "0000:06:00.0", 0, 143771),
        (1, "NVIDIA H200", "GPU-00000001", "0000:07:00.0", 3193, 143771)]
    assert sorted((p.pid, p.name, p.type, p.used_memory_mib, p.gpu_index) for p in snapshot.processes) == [
        (701, "python3", "C", 2566, 1),
        (702, "Insufficient Permissions", "G", None, 1),
        (703, "C:\\Windows\\explorer.exe", "C+G", 10, 1)]
    document = classify(snapshot, 30)
    assert [g.state for g in document.gpus] == [GpuState.IDLE, GpuState.OCCUPIED_BY_OTHERS]


def test_reads_telemetry_and_an_unsupported_call_leaves_only_its_field_none() -> None:
    nvml = FakeNvml()
    snapshot = source(nvml).snapshot()
    assert [(g.utilization_percent, g.temperature_c, g.power_draw_w, g.power_limit_w, g.fan_percent)
            for g in snapshot.gpus] == [(7, 41, 61.234, 450.0, 30), (None, 36, 122.99, 700.0, None)]
    assert nvml.sensors == [0, 0] and snapshot.warnings == ()  # NotSupported is not worth a warning
    gpu = classify(snapshot, 30).to_dict()["gpu_status"][1]
    assert [gpu[k] for k in ("utilization_percent", "temperature_c", "power_draw_w", "power_limit_w",
                             "fan_percent")] == [None, 36, 122.99, 700.0, None]


@pytest.mark.parametrize("values", [
    {"util": 101, "temp": -5, "power_mw": -1, "limit_mw": 0, "fan": 2**32 - 1},
    {"util": None, "temp": 65535, "power_mw": 2**32 - 1, "limit_mw": NOT_AVAILABLE, "fan": True},
    {"util": "7", "temp": 41.5e9, "power_mw": 12.5, "limit_mw": None, "fan": -1},
    {"util": NVMLError("Unknown Error"), "temp": NVMLError("Not Supported"), "power_mw": NVMLError("No permission"),
     "limit_mw": NVMLError("Not Supported"), "fan": NVMLError("Not Supported")},
])
def test_absurd_or_failing_telemetry_is_none_and_memory_still_read(values: dict[str, Any]) -> None:
    nvml = FakeNvml()
    nvml.telemetry[0] = values
    gpu = source(nvml).snapshot().gpus[0]
    assert (gpu.utilization_percent, gpu.temperature_c, gpu.power_draw_w, gpu.power_limit_w,
            gpu.fan_percent) == (None, None, None, None, None)
    assert (gpu.memory_used_mib, gpu.memory_total_mib) == (0, 143771)


def test_a_binding_without_telemetry_calls_still_reads_memory() -> None:
    class OldNvml(FakeNvml):
        """No utilization or fan call, no NVML_TEMPERATURE_GPU constant."""

        def __getattribute__(self, name: str) -> Any:
            if name in ("nvmlDeviceGetUtilizationRates", "nvmlDeviceGetFanSpeed", "NVML_TEMPERATURE_GPU"):
                raise AttributeError(name)
            return super().__getattribute__(name)

    nvml = OldNvml()
    gpus = source(nvml).snapshot().gpus
    assert [(g.memory_used_mib, g.utilization_percent, g.temperature_c, g.fan_percent) for g in gpus] == [
        (0, None, 41, None), (3193, None, 36, None)]
    assert nvml.sensors == [0, 0]  # the GPU sensor's number, as pynvml names it


def test_a_lost_gpu_is_unreadable_and_the_others_survive() -> None:
    snapshot = source(FakeNvml(lost=1)).snapshot()
    assert [g.memory_used_mib for g in snapshot.gpus] == [0, None]
    assert [(g.temperature_c, g.power_draw_w) for g in snapshot.gpus] == [(41, 61.234), (None, None)]
    assert any("GPU is lost" in w for w in snapshot.warnings)
    assert classify(snapshot, 30).gpus[1].state is GpuState.UNAVAILABLE


def test_without_v2_memory_nvidia_smi_is_used(fake_smi: FakeSmi) -> None:
    smi = SmiSource(configured_path=None, timeout_seconds=10, lookup=PsutilLookup())
    snapshot = source(FakeNvml(v2=False), fallback=smi).snapshot()
    assert snapshot.source == "nvidia-smi" and [g.uuid for g in snapshot.gpus] == ["GPU-fake-0000", "GPU-fake-0001"]
    assert any("NVML not used" in w for w in snapshot.warnings)


def test_init_failure_falls_back_to_nvidia_smi_which_explains(fake_smi: FakeSmi) -> None:
    fake_smi.set_mode("fail")
    smi = SmiSource(configured_path=None, timeout_seconds=10, lookup=PsutilLookup())
    snapshot = source(FakeNvml(init_error=True), fallback=smi).snapshot()
    assert snapshot.gpus == () and "couldn't communicate with the NVIDIA driver" in (snapshot.error or "")


def test_init_once() -> None:
    nvml = FakeNvml()
    nvml_source = source(nvml)
    nvml_source.snapshot()
    nvml_source.snapshot()
    assert nvml.inits == 1


def test_setting_selects_nvml_and_mock_still_wins(tmp_path: Path) -> None:
    source = make_source(make_settings(tmp_path, gpu_source="nvml"))
    if sys.platform == "win32":  # Windows adds per-process memory from its counters (WDDM) around it
        assert isinstance(source, WindowsMemorySource)
        source = source.inner
    assert isinstance(source, NvmlSource)
    assert make_source(make_settings(tmp_path, gpu_source="nvml", mock_smi_text="0, 1")).description == "mock (text)"
    with pytest.raises(Exception, match="gpu_source"):
        make_settings(tmp_path, gpu_source="magic")


def test_real_binding_without_a_driver_falls_back(fake_smi: FakeSmi, tmp_path: Path) -> None:
    """The installed pynvml on this (GPU-less) machine: nvmlInit fails, nvidia-smi answers."""
    snapshot = make_source(make_settings(tmp_path, gpu_source="nvml")).snapshot()
    assert [g.uuid for g in snapshot.gpus] == ["GPU-fake-0000", "GPU-fake-0001"]
    assert any("NVML not used" in w for w in snapshot.warnings)
