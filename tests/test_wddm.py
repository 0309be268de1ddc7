"""Per-process GPU memory from Windows' counters where nvidia-smi prints N/A (WDDM): the matching of
adapters to GPUs (pure), the source that applies it, and the PDH reader's refusal off Windows."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gpuwarden.probe.assemble import build_snapshot
from gpuwarden.probe.counters import CountersUnavailable, PdhCounters, WindowsMemorySource
from gpuwarden.probe.parse import parse_output
from gpuwarden.probe.wddm import COUNTER_SOURCE, MIB, fill_process_memory, parse_samples
from gpuwarden.records import GpuProcess, GpuReading, Snapshot
from tests.conftest import PUBLIC, TESTS

COUNTERS = TESTS / "fixtures" / "windows-counters"
NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
NVIDIA, IGPU = "0x00000000_0x0000D1F5", "0x00000000_0x0000C8A0"


def recorded_pairs(path: Path) -> list[tuple[str, float]]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return [(name, float(value)) for name, value in (line.split("\t") for line in lines if not line.startswith("#"))]


def windows_snapshot() -> Snapshot:
    text = (PUBLIC / "017-rtx3080-576.80-windows-cg.txt").read_text(encoding="utf-8")
    return build_snapshot([parse_output(text)], NOW, "nvidia-smi")


def test_wddm_processes_get_their_memory_from_the_counters() -> None:
    snapshot = windows_snapshot()
    assert all(p.used_memory_mib is None for p in snapshot.processes)  # WDDM: N/A for every process
    filled = {p.pid: p for p in fill_process_memory(snapshot, parse_samples(recorded_pairs(
        COUNTERS / "017-rtx3080-dedicated-usage.tsv"))).processes}
    assert (filled[2144].used_memory_mib, filled[2144].used_memory_source) == (412, COUNTER_SOURCE)  # ollama
    assert filled[11020].used_memory_mib == 21  # explorer: its share of the NVIDIA adapter, not the iGPU's
    assert filled[18716].used_memory_mib == 28  # two physical parts of one adapter, summed
    assert (filled[13224].used_memory_mib, filled[13224].used_memory_source) == (0, COUNTER_SOURCE)  # a few KiB
    assert (filled[21488].used_memory_mib, filled[21488].used_memory_source) == (None, None)  # no counter
    assert 4321 not in filled  # the iGPU-only process is not invented onto the NVIDIA GPU


def sample(pid: int, luid: str, mib: int, phys: int = 0) -> tuple[str, float]:
    return f"pid_{pid}_luid_{luid}_phys_{phys}", float(mib * MIB)


def two_gpus(*processes: GpuProcess, used: tuple[int, int] = (2000, 2000)) -> Snapshot:
    gpus = tuple(GpuReading(index=i, memory_used_mib=used[i], memory_total_mib=24000) for i in (0, 1))
    return Snapshot(taken_at=NOW, source="nvidia-smi", gpus=gpus, processes=processes)


def test_adapters_are_learned_from_unambiguous_processes() -> None:
    second = "0x00000000_0x0000E001"
    snapshot = two_gpus(GpuProcess(pid=1, name="a", gpu_index=0), GpuProcess(pid=2, name="b", gpu_index=1),
                        GpuProcess(pid=3, name="both", gpu_index=0), GpuProcess(pid=3, name="both", gpu_index=1))
    pairs = [sample(1, NVIDIA, 100), sample(2, second, 200), sample(3, NVIDIA, 300), sample(3, second, 400)]
    filled = fill_process_memory(snapshot, parse_samples(pairs)).processes
    memory = [(p.pid, p.gpu_index, p.used_memory_mib) for p in filled]
    assert memory == [(1, 0, 100), (2, 1, 200), (3, 0, 300), (3, 1, 400)]


def test_nothing_is_filled_where_the_adapter_is_uncertain() -> None:
    one_process = two_gpus(GpuProcess(pid=5, name="x", gpu_index=0), GpuProcess(pid=5, name="x", gpu_index=1))
    assert all(p.used_memory_mib is None for p in fill_process_memory(
        one_process, parse_samples([sample(5, NVIDIA, 100), sample(5, IGPU, 100)])).processes)
    implausible = two_gpus(GpuProcess(pid=6, name="y", gpu_index=0), used=(100, 1))  # more than the GPU uses
    assert fill_process_memory(implausible, parse_samples([sample(6, IGPU, 5000)])).processes[0].used_memory_mib is None
    given_by_smi = two_gpus(GpuProcess(pid=7, name="z", gpu_index=0, used_memory_mib=50))
    assert fill_process_memory(given_by_smi, parse_samples([sample(7, NVIDIA, 60)])) == given_by_smi


@pytest.mark.parametrize("name", ["pid_1_luid_0x0_phys_0", "pid_x_luid_0x00000000_0x0000D1F5_phys_0", "_Total",
                                  "pid_1_luid_0x00000000_0x0000D1F5_phys_0_extra", ""])
def test_malformed_instances_are_skipped(name: str) -> None:
    assert parse_samples([(name, 1.0)]) == []


def test_impossible_values_are_skipped() -> None:
    good = f"pid_1_luid_{NVIDIA}_phys_0"
    assert parse_samples([(good, -1.0), (good, float("nan")), (good, 1e20)]) == []


@given(st.lists(st.tuples(st.text(max_size=80), st.floats(allow_nan=True))))
def test_counter_parsing_never_crashes(pairs: list[tuple[str, float]]) -> None:
    fill_process_memory(windows_snapshot(), parse_samples(pairs))


class RecordedCounters:
    def __init__(self, pairs: list[tuple[str, float]] | None) -> None:
        self.pairs, self.reads = pairs, 0

    def read(self) -> list[tuple[str, float]]:
        self.reads += 1
        if self.pairs is None:
            raise CountersUnavailable("PdhAddCounter failed (0xC0000BB8)")
        return self.pairs


class Fixed:
    description = "nvidia-smi"

    def __init__(self, snapshot: Snapshot) -> None:
        self._snapshot = snapshot

    def snapshot(self) -> Snapshot:
        return self._snapshot


def test_the_source_reads_counters_only_when_memory_is_missing() -> None:
    counters = RecordedCounters(recorded_pairs(COUNTERS / "017-rtx3080-dedicated-usage.tsv"))
    source = WindowsMemorySource(Fixed(windows_snapshot()), counters)
    assert source.description == "nvidia-smi"
    assert any(p.used_memory_source == COUNTER_SOURCE for p in source.snapshot().processes)
    known = two_gpus(GpuProcess(pid=7, name="z", gpu_index=0, used_memory_mib=50))
    WindowsMemorySource(Fixed(known), counters).snapshot()
    assert counters.reads == 1
    unreadable = WindowsMemorySource(Fixed(windows_snapshot()), RecordedCounters(None)).snapshot()
    assert any("counters cannot be read" in warning for warning in unreadable.warnings)


def test_the_pdh_reader_says_why_it_cannot_read() -> None:
    """Off Windows there is no PDH; under Wine there is, without this counter set. Never a crash."""
    try:
        pairs = PdhCounters().read()
    except CountersUnavailable as error:
        assert str(error)
    else:  # a real Windows machine with a GPU counter set
        assert all(isinstance(name, str) for name, _ in pairs)


def test_an_integrated_gpu_is_not_taken_for_the_nvidia_one() -> None:
    """A process on GPU 0 with 0 bytes on the NVIDIA adapter and 90 MiB on the integrated one uses
    two adapters: nothing is learned from it, and GPU 0 (12 MiB used) stays idle."""
    from gpuwarden.classify import classify
    from gpuwarden.records import GpuState

    snapshot = two_gpus(GpuProcess(pid=8, name="explorer.exe", gpu_index=0), used=(12, 1))
    filled = fill_process_memory(snapshot, parse_samples([sample(8, NVIDIA, 0), sample(8, IGPU, 90)]))
    assert filled.processes[0].used_memory_mib is None
    assert classify(filled, 30).gpus[0].state is GpuState.IDLE


def test_counter_values_never_make_a_gpu_busier_or_invent_a_stranger() -> None:
    """Counters leave out the driver's own allocations: a gap to nvidia-smi's figure is no foreign
    memory, and a counter value above it does not raise the GPU's use."""
    from gpuwarden.classify import classify

    snapshot = two_gpus(GpuProcess(pid=9, name="server.exe", gpu_index=0), used=(6200, 1))
    filled = fill_process_memory(snapshot, parse_samples([sample(9, NVIDIA, 5800)]))
    gpu = classify(filled, 30).gpus[0]
    assert gpu.process_info[0].used_memory_mib == 5800
    assert (gpu.unattributed_memory_mib, gpu.shared_with_others) == (None, False)
    assert "6200 MiB used" in gpu.reason
