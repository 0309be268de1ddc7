"""The demo's simulated machine: a model that runs shows its memory on its GPUs, GPU 1's training job
comes and goes with the clock, GPU 2 drives the monitors and stays loadable; the registry the demo
model servers write is untrusted."""

from __future__ import annotations

import json
import os
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gpuwarden.classify import classify
from gpuwarden.desktop import DEFAULT_DESKTOP_PROCESSES, DesktopRule
from gpuwarden.probe.demo_registry import SimulatedSource, register_this_process, registered_models
from gpuwarden.probe.simulated import (
    DESKTOP_GPU_INDEX,
    FOREIGN_CYCLE_SECONDS,
    FOREIGN_GPU_INDEX,
    FOREIGN_MEMORY_MIB,
    FOREIGN_PRESENT_SECONDS,
    DemoModelProcess,
    foreign_process,
    simulate,
)
from gpuwarden.probe.users import ProcessOwner
from gpuwarden.records import GpuState, PlacementView

CYCLE_START = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)
DESKTOP = DesktopRule.of(DEFAULT_DESKTOP_PROCESSES)
LLAMA = DemoModelProcess(pid=4321, name="python3", gpu_indexes=(0,), memory_mib=6912)
QWEN = DemoModelProcess(pid=4400, name="python3", gpu_indexes=(0, 2), memory_mib=9216)


class NamedLookup:
    def user_of(self, pid: int, smi_name: str) -> ProcessOwner:
        return ProcessOwner("carol")


def test_the_training_job_holds_gpu_1_three_minutes_in_five() -> None:
    present = [foreign_process(s, windows=False) is not None for s in range(0, 2 * FOREIGN_CYCLE_SECONDS, 10)]
    assert present.count(True) == 2 * FOREIGN_PRESENT_SECONDS // 10
    assert present[0] and not present[FOREIGN_PRESENT_SECONDS // 10]  # there from the demo's start, then gone
    first = foreign_process(0, windows=False)
    later = foreign_process(FOREIGN_CYCLE_SECONDS, windows=True)
    assert first is not None and later is not None and first.pid != later.pid  # a new process each time
    assert (first.name, first.user, first.type, first.used_memory_mib) == ("python3", "alice", "C", FOREIGN_MEMORY_MIB)
    assert later.name == "python.exe"
    assert foreign_process(FOREIGN_PRESENT_SECONDS, windows=False) is None


@pytest.mark.parametrize("windows", [False, True])
def test_an_empty_machine_one_busy_gpu_and_a_desktop_gpu_that_stays_loadable(windows: bool) -> None:
    document = classify(simulate(CYCLE_START, (), windows=windows), 30, desktop=DESKTOP)
    idle, busy, desktop = document.gpus
    assert (idle.state, idle.memory_used_mib, idle.utilization_percent) == (GpuState.IDLE, 1, 0)
    assert busy.state is GpuState.OCCUPIED_BY_OTHERS and "alice" in busy.reason
    assert busy.utilization_percent is not None and busy.utilization_percent > 85
    assert desktop.state is GpuState.IDLE and desktop.loadable and desktop.index == DESKTOP_GPU_INDEX
    assert desktop.desktop_memory_mib == (547 if windows else 649)  # the driver's 1 MiB, nobody else's, too
    assert all(p.desktop for p in desktop.process_info)
    later = classify(simulate(CYCLE_START + timedelta(seconds=FOREIGN_PRESENT_SECONDS), (), windows=windows,
                              started_at=CYCLE_START), 30, desktop=DESKTOP)
    assert later.gpus[FOREIGN_GPU_INDEX].state is GpuState.IDLE  # the job has ended


def test_a_running_model_shows_its_memory_and_work_on_each_of_its_gpus() -> None:
    snapshot = simulate(CYCLE_START, (LLAMA, QWEN), windows=False)
    placements = [PlacementView("llama-7b", (0,), frozenset({LLAMA.pid})),
                  PlacementView("qwen-14b", (0, 2), frozenset({QWEN.pid}))]
    gpu0, _gpu1, gpu2 = classify(snapshot, 30, placements, DESKTOP).gpus
    assert gpu0.memory_used_mib == 1 + 6912 + 9216 and gpu0.state is GpuState.MODEL_LOADED
    assert {p.model_name for p in gpu0.process_info} == {"llama-7b", "qwen-14b"}
    assert gpu2.memory_used_mib == 1 + 9216 + 412 + 236 and not gpu2.shared_with_others
    for gpu in (gpu0, gpu2):
        assert gpu.utilization_percent is not None and 38 <= gpu.utilization_percent <= 68
        assert gpu.power_draw_w is not None and gpu.power_limit_w is not None and gpu.power_draw_w < gpu.power_limit_w
        assert gpu.temperature_c is not None and 40 < gpu.temperature_c < 80


@pytest.mark.parametrize("windows", [False, True])
def test_a_demo_model_given_a_simulated_processs_pid_never_takes_its_place(windows: bool) -> None:
    """The demo models are real processes: under Wine one can get the PID the simulated shell has."""
    simulated = simulate(CYCLE_START, (), windows=windows).processes
    clashing = [DemoModelProcess(pid=p.pid, name="python3", gpu_indexes=(0,), memory_mib=100) for p in simulated]
    snapshot = simulate(CYCLE_START, clashing, windows=windows)
    pids = [p.pid for p in snapshot.processes]
    assert len(pids) == len(set(pids)) == 2 * len(simulated)
    placements = [PlacementView(f"m{n}", (0,), frozenset({model.pid})) for n, model in enumerate(clashing)]
    busy, desktop = classify(snapshot, 30, placements, DESKTOP).gpus[1:]
    assert busy.state is GpuState.OCCUPIED_BY_OTHERS and "alice" in busy.reason
    assert desktop.state is GpuState.IDLE and desktop.desktop_memory_mib == (547 if windows else 649)


def test_a_model_registered_on_gpus_the_machine_lacks_is_not_invented() -> None:
    stray = DemoModelProcess(pid=4500, name="python3", gpu_indexes=(7,), memory_mib=100)
    assert not [p for p in simulate(CYCLE_START, (stray,), windows=False).processes if p.pid == 4500]


def test_registered_models_are_the_live_processes_of_well_formed_files(tmp_path: Path) -> None:
    path = register_this_process(tmp_path, [0, 2], 6912)
    me = registered_models(tmp_path)
    assert [(m.pid, m.gpu_indexes, m.memory_mib) for m in me] == [(os.getpid(), (0, 2), 6912)]
    record = json.loads(path.read_text(encoding="utf-8"))
    hostile = [
        "not json", "[]", json.dumps({**record, "pid": True}), json.dumps({**record, "gpus": [0, 99]}),
        json.dumps({**record, "memory_mib": -5}), json.dumps({**record, "start_time": "soon"}),
        json.dumps({**record, "start_time": record["start_time"] - 3600}),  # the PID, but not the same process
        json.dumps({**record, "pid": 2**31 - 7}),  # no such process
        "x" * 100_000,
    ]
    for n, text in enumerate(hostile):
        (tmp_path / f"bad{n}.json").write_text(text, encoding="utf-8")
    assert [m.pid for m in registered_models(tmp_path)] == [os.getpid()]
    assert registered_models(tmp_path / "missing") == []
    left = sorted(p.name for p in tmp_path.glob("*.json"))  # the ended processes' registrations are gone
    assert f"{os.getpid()}.json" in left and "bad6.json" not in left and "bad7.json" not in left
    assert "bad0.json" in left  # what does not decode is left alone


def test_the_source_gives_registered_models_their_users_and_keeps_the_simulated_ones(tmp_path: Path) -> None:
    register_this_process(tmp_path, [0], 2048)
    source = SimulatedSource(tmp_path, NamedLookup(), lambda: CYCLE_START)
    snapshot = source.snapshot()
    users = {p.pid: p.user for p in snapshot.processes}
    assert users[os.getpid()] == "carol"
    assert "alice" in users.values() and ("DWM-1" if sys.platform == "win32" else "root") in users.values()
    assert snapshot.gpus[0].memory_used_mib == 1 + 2048 and source.description.startswith("demo")
