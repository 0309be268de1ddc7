"""The classifier's rules (seed §3): boundaries, placements, foreign processes, CPU mode."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from gpuwarden.classify import classify
from gpuwarden.records import GpuProcess, GpuReading, GpuState, PlacementView, Snapshot

NOW = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)


def snapshot(*used: int | None, processes: tuple[GpuProcess, ...] = ()) -> Snapshot:
    gpus = tuple(GpuReading(index=i, name="GPU", memory_used_mib=u, memory_total_mib=24564) for i, u in enumerate(used))
    return Snapshot(taken_at=NOW, source="test", gpus=gpus, processes=processes)


@pytest.mark.parametrize(("used", "state", "enabled"), [
    (0, GpuState.IDLE, True), (30, GpuState.IDLE, True), (31, GpuState.OCCUPIED_BY_OTHERS, False),
    (363, GpuState.OCCUPIED_BY_OTHERS, False), (None, GpuState.UNAVAILABLE, False)])
def test_threshold_boundaries_without_placement(used: int | None, state: GpuState, enabled: bool) -> None:
    gpu = classify(snapshot(used), 30).gpus[0]
    assert gpu.state is state
    assert gpu.select_enabled is enabled
    assert gpu.loadable is (state is GpuState.IDLE)
    assert gpu.model_name is None


@pytest.mark.parametrize("used", [0, 30, 31, 5000, None])
def test_a_placement_makes_model_loaded_whatever_the_memory(used: int | None) -> None:
    placement = PlacementView(model_name="llama-7b", gpu_indexes=(0,))
    gpu = classify(snapshot(used), 30, [placement]).gpus[0]
    assert (gpu.state, gpu.model_name, gpu.select_enabled, gpu.loadable) == (
        GpuState.MODEL_LOADED, "llama-7b", True, False)


def test_configurable_threshold() -> None:
    assert classify(snapshot(100), 100).gpus[0].state is GpuState.IDLE
    assert classify(snapshot(101), 100).gpus[0].state is GpuState.OCCUPIED_BY_OTHERS
    assert classify(snapshot(1), 0).gpus[0].state is GpuState.OCCUPIED_BY_OTHERS


def test_own_and_foreign_processes_are_told_apart() -> None:
    processes = (GpuProcess(pid=10, name="python", used_memory_mib=900, gpu_index=0, user="alice"),
                 GpuProcess(pid=20, name="<script>", used_memory_mib=300, gpu_index=0, user="bob"))
    placement = PlacementView(model_name="m", gpu_indexes=(0,), own_pids=frozenset({10}))
    gpu = classify(snapshot(1200, processes=processes), 30, [placement]).gpus[0]
    assert gpu.state is GpuState.MODEL_LOADED
    assert [(p.pid, p.foreign, p.model_name) for p in gpu.process_info] == [(10, False, "m"), (20, True, None)]
    assert "also used by others" in gpu.reason and "PID 20" in gpu.reason


def test_occupied_gpu_lists_processes_with_users() -> None:
    processes = (GpuProcess(pid=5678, name="python.exe", type="C", used_memory_mib=363, gpu_index=1, user="bob"),)
    document = classify(snapshot(1, 363, processes=processes), 30)
    assert document.to_dict()["gpu_status"][1]["process_info"] == [
        {"pid": 5678, "process_name": "python.exe", "type": "C", "used_memory_mib": 363, "used_memory_source": None,
         "user": "bob",
         "user_unknown_reason": None, "foreign": True, "desktop": False, "model_name": None}]
    denied = (GpuProcess(pid=9, name="x.exe", gpu_index=1, user_unknown="Windows denies it"),)
    info = classify(snapshot(1, 363, processes=denied), 30).to_dict()["gpu_status"][1]["process_info"][0]
    assert (info["user"], info["user_unknown_reason"]) == (None, "Windows denies it")


def test_cpu_mode_document() -> None:
    document = classify(Snapshot(taken_at=NOW, source="nvidia-smi", error="No devices were found"), 30)
    assert document.to_dict()["gpu_status"] == [
        {"index": "CPU", "state": "idle", "model_name": None, "select_enabled": True}]
    assert (document.mode, document.total_gpus, document.error) == ("cpu", 0, "No devices were found")


def test_document_fields_follow_the_seed() -> None:
    data = classify(snapshot(1, 363), 30).to_dict()
    assert {"total_gpus", "mode", "error", "threshold_mib", "checked_at", "gpu_status"} <= set(data)
    assert data["checked_at"] == "2026-11-27T10:00:00Z"
    assert {"index", "name", "uuid", "memory_used_mib", "memory_total_mib", "state", "model_name",
            "select_enabled", "process_info"} <= set(data["gpu_status"][0])


def test_memory_no_listed_process_accounts_for_is_reported() -> None:
    own = (GpuProcess(pid=10, name="python", used_memory_mib=900, gpu_index=0),)
    placement = PlacementView(model_name="m", gpu_indexes=(0,), own_pids=frozenset({10}))
    gpu = classify(snapshot(5000, processes=own), 30, [placement]).gpus[0]
    assert gpu.unattributed_memory_mib == 4100 and "4100 MiB used by no listed process" in gpu.reason
    quiet = classify(snapshot(910, processes=own), 30, [placement]).gpus[0]
    assert quiet.unattributed_memory_mib == 10 and "no listed process" not in quiet.reason
    wddm = (GpuProcess(pid=10, name="python.exe", used_memory_mib=None, gpu_index=0),)
    assert classify(snapshot(5000, processes=wddm), 30, [placement]).gpus[0].unattributed_memory_mib is None


def test_two_models_on_one_gpu_are_a_tuple_and_shared_use_is_flagged() -> None:
    placements = [PlacementView("a", (0,), frozenset({10})), PlacementView("b", (0, 1), frozenset({11}))]
    own = (GpuProcess(pid=10, name="a", used_memory_mib=100, gpu_index=0),
           GpuProcess(pid=11, name="b", used_memory_mib=100, gpu_index=0))
    alone = classify(snapshot(200, 100, processes=own), 30, placements)
    assert alone.gpus[0].model_names == ("a", "b") and alone.gpus[0].model_name == "a, b"
    assert alone.to_dict()["gpu_status"][0]["model_name"] == "a, b"
    assert not alone.gpus[0].shared_with_others
    assert alone.gpus[1].shared_with_others  # 100 MiB used by no listed process, above 30
    assert not classify(snapshot(200, 100, processes=own), 100, placements).gpus[1].shared_with_others
    stranger = GpuProcess(pid=99, name="train.py", used_memory_mib=5, gpu_index=0)
    shared = classify(snapshot(205, processes=(*own, stranger)), 30, placements).gpus[0]
    assert shared.shared_with_others and "also used by others: PID 99 train.py" in shared.reason
    assert not classify(snapshot(500), 30).gpus[0].shared_with_others  # occupied, but no model of ours


def test_a_gpu_whose_processes_hold_more_than_it_reports_is_not_idle() -> None:
    liar = (GpuProcess(pid=9, name="train.py", used_memory_mib=5000, gpu_index=0),)
    gpu = classify(snapshot(1, processes=liar), 30).gpus[0]
    assert (gpu.state, gpu.loadable, gpu.memory_used_mib) == (GpuState.OCCUPIED_BY_OTHERS, False, 1)
    assert "its processes hold 5000 MiB (nvidia-smi reports 1 MiB used) > 30 MiB; PID 9 train.py" in gpu.reason
    small = (GpuProcess(pid=9, name="x", used_memory_mib=20, gpu_index=0),)
    assert classify(snapshot(1, processes=small), 30).gpus[0].state is GpuState.IDLE  # 20 MiB: still idle
