"""probe/assemble.py: several parsed outputs become one Snapshot (GPU fields merged, processes joined
to their GPU by index, uuid or bus id, nothing silently dropped)."""

from __future__ import annotations

from datetime import UTC, datetime

from gpuwarden.probe.assemble import _merge_gpus, build_snapshot
from gpuwarden.records import GpuProcess, GpuReading, OutputKind, ParsedOutput

NOW = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)
UUID0 = "GPU-9f039991-11fe-c64c-80b4-7cef67a5df02"
UUID1 = "GPU-0aa5b1c2-0000-1111-2222-333344445555"


def test_merge_fills_only_missing_fields_and_keeps_zero_memory() -> None:
    csv = (GpuReading(0, memory_used_mib=0, memory_total_mib=None),
           GpuReading(1, memory_used_mib=500, memory_total_mib=8000))
    table = (GpuReading(0, name="NVIDIA H200", uuid=UUID0, bus_id="0000:00:06.0", memory_used_mib=7,
                        memory_total_mib=143771),
             GpuReading(1, name="Tesla T4", uuid=UUID1, bus_id="0000:00:07.0", memory_used_mib=999,
                        memory_total_mib=1))
    merged = _merge_gpus(csv, table)
    assert merged == (
        GpuReading(0, name="NVIDIA H200", uuid=UUID0, bus_id="0000:00:06.0", memory_used_mib=0,
                   memory_total_mib=143771),
        GpuReading(1, name="Tesla T4", uuid=UUID1, bus_id="0000:00:07.0", memory_used_mib=500,
                   memory_total_mib=8000),
    )


def test_merge_keeps_the_first_values_where_both_have_them() -> None:
    first = (GpuReading(0, name="first", uuid="GPU-a", bus_id="0000:01:00.0", memory_used_mib=1,
                        memory_total_mib=2),)
    second = (GpuReading(0, name="second", uuid="GPU-b", bus_id="0000:02:00.0", memory_used_mib=3,
                         memory_total_mib=4),)
    assert _merge_gpus(first, second) == first


def test_merge_keeps_gpus_present_in_only_one_output() -> None:
    first = (GpuReading(0, memory_used_mib=1), GpuReading(2, memory_used_mib=0))
    second = (GpuReading(0, name="A"), GpuReading(3, name="D", memory_used_mib=40))
    merged = _merge_gpus(first, second)
    assert [(g.index, g.name, g.memory_used_mib) for g in merged] == [(0, "A", 1), (2, None, 0), (3, "D", 40)]


def test_snapshot_merges_a_nameless_csv_with_a_table_and_sorts_by_index() -> None:
    csv = ParsedOutput(OutputKind.CSV_GPU, gpus=(GpuReading(1, memory_used_mib=0), GpuReading(0, memory_used_mib=12)))
    table = ParsedOutput(OutputKind.TABLE, gpus=(GpuReading(0, name="RTX 4090", memory_used_mib=99,
                                                            memory_total_mib=24564),
                                                 GpuReading(1, name="RTX 4090", memory_total_mib=24564),
                                                 GpuReading(2, name="RTX 3080", memory_used_mib=5)),
                         driver_version="576.80", lists_processes=True)
    snapshot = build_snapshot([csv, table], NOW, "mock")
    assert [(g.index, g.name, g.memory_used_mib, g.memory_total_mib) for g in snapshot.gpus] == [
        (0, "RTX 4090", 12, 24564), (1, "RTX 4090", 0, 24564), (2, "RTX 3080", 5, None)]
    assert (snapshot.taken_at, snapshot.source, snapshot.driver_version) == (NOW, "mock", "576.80")
    assert snapshot.lists_processes is True and snapshot.error is None and snapshot.warnings == ()


def test_processes_are_joined_by_uuid_case_insensitively_and_by_bus_id() -> None:
    gpus = ParsedOutput(OutputKind.CSV_GPU, gpus=(
        GpuReading(0, uuid=UUID0, bus_id="0000:0C:00.0", memory_used_mib=3193),
        GpuReading(1, uuid=UUID1, bus_id="0000:0D:00.0", memory_used_mib=700)))
    apps = ParsedOutput(OutputKind.CSV_APPS, processes=(
        GpuProcess(701, "python3", used_memory_mib=2566, gpu_uuid=UUID0.upper()),
        GpuProcess(702, "train.py", used_memory_mib=612, gpu_bus_id="00000000:0d:00.0"),
        GpuProcess(703, "ghost", used_memory_mib=5, gpu_uuid="GPU-not-here"),
        GpuProcess(704, "lost", gpu_bus_id="00000000:99:00.0"),
        GpuProcess(705, "nameless")), lists_processes=True)
    snapshot = build_snapshot([gpus, apps], NOW, "mock")
    assert [(p.pid, p.gpu_index) for p in snapshot.processes] == [(701, 0), (702, 1)]
    assert [p.pid for p in snapshot.processes_on(0)] == [701]
    assert [p.pid for p in snapshot.processes_on(1)] == [702]
    assert [(p.pid, p.gpu_index) for p in snapshot.unassigned_processes] == [(703, None), (704, None), (705, None)]
    assert snapshot.processes[0].gpu_uuid == UUID0.upper()  # the row itself is kept as printed


def test_process_on_an_unknown_gpu_index_is_kept_apart() -> None:
    table = ParsedOutput(OutputKind.TABLE, gpus=(GpuReading(0, memory_used_mib=400),), processes=(
        GpuProcess(10, "a", gpu_index=0), GpuProcess(11, "b", gpu_index=3)), lists_processes=True)
    snapshot = build_snapshot([table], NOW, "mock")
    assert [(p.pid, p.gpu_index) for p in snapshot.processes] == [(10, 0)]
    assert [(p.pid, p.gpu_index) for p in snapshot.unassigned_processes] == [(11, 3)]


def test_pmon_rows_do_not_duplicate_a_richer_outputs_rows() -> None:
    table = ParsedOutput(OutputKind.TABLE, gpus=(GpuReading(0, memory_used_mib=3193),), processes=(
        GpuProcess(701, "python3", type="C", used_memory_mib=2566, gpu_index=0),), lists_processes=True)
    pmon = ParsedOutput(OutputKind.PMON, processes=(
        GpuProcess(701, "python3", type="C", gpu_index=0),
        GpuProcess(702, "python3", type="C", gpu_index=0)), lists_processes=True)
    snapshot = build_snapshot([table, pmon], NOW, "mock")
    assert [(p.pid, p.used_memory_mib) for p in snapshot.processes] == [(701, 2566), (702, None)]


def test_no_gpus_is_an_error_made_of_the_messages() -> None:
    first = ParsedOutput(OutputKind.ERROR, messages=("Failed to initialize NVML: Driver/library version mismatch",
                                                     "NVML library version: 535.183"))
    apps = ParsedOutput(OutputKind.CSV_APPS, processes=(GpuProcess(9, "x", gpu_uuid=UUID0),), lists_processes=True)
    snapshot = build_snapshot([first, apps], NOW, "mock")
    assert snapshot.gpus == () and snapshot.processes == ()
    assert snapshot.error == "Failed to initialize NVML: Driver/library version mismatch NVML library version: 535.183"
    assert snapshot.warnings == ()  # the messages became the error, not warnings
    assert [p.pid for p in snapshot.unassigned_processes] == [9]
    assert build_snapshot([apps], NOW, "mock").error == "nvidia-smi reported no GPU"


def test_messages_beside_gpus_are_warnings_not_an_error() -> None:
    table = ParsedOutput(OutputKind.TABLE, gpus=(GpuReading(0, memory_used_mib=1),),
                         messages=("Unable to determine the device handle for GPU0000:00:07.0: Unknown Error",))
    snapshot = build_snapshot([table], NOW, "mock")
    assert snapshot.error is None
    assert snapshot.warnings == ("Unable to determine the device handle for GPU0000:00:07.0: Unknown Error",)
    assert snapshot.lists_processes is False
