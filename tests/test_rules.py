"""The pure load rules (rules.py): default GPUs, refusals and their sentences, CPU mode."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from gpuwarden.classify import StatusDocument, classify
from gpuwarden.config import ModelConfig
from gpuwarden.errors import BadSelection, LoadRefused
from gpuwarden.records import GpuProcess, GpuReading, ModelState, PlacementRecord, PlacementView, Selection, Snapshot
from gpuwarden.rules import check_selection, default_selection, refuse_if_already_loaded

NOW = datetime(2026, 11, 27, tzinfo=UTC)


def document(*used: int | None, placements: tuple[PlacementView, ...] = ()) -> StatusDocument:
    gpus = tuple(GpuReading(index=i, uuid=f"GPU-{i}", memory_used_mib=u, memory_total_mib=1000)
                 for i, u in enumerate(used))
    processes = (GpuProcess(pid=77, name="train.py", used_memory_mib=500, gpu_index=1, user="bob"),)
    return classify(Snapshot(taken_at=NOW, source="t", gpus=gpus, processes=processes), 30, placements)


def model(default_gpus: int = 1) -> ModelConfig:
    return ModelConfig(name="m", command=("x",), default_gpus=default_gpus)


def test_default_takes_the_first_idle_gpus() -> None:
    status = document(0, 500, 0, 0, placements=(PlacementView("other", (2,)),))
    assert default_selection(model(1), status) == Selection((0,))
    assert default_selection(model(2), status) == Selection((0, 3))
    with pytest.raises(LoadRefused, match=r"model m wants 3 GPU\(s\); idle now: 0, 3; choose GPUs explicitly"):
        default_selection(model(3), status)


def test_default_is_the_cpu_in_cpu_mode_or_when_the_model_wants_no_gpu() -> None:
    assert default_selection(model(0), document(0, 0)) == Selection.cpu()
    cpu_mode = classify(Snapshot(taken_at=NOW, source="t", error="No devices were found"), 30)
    assert default_selection(model(2), cpu_mode).on_cpu


def test_check_names_every_busy_gpu_and_who_holds_it() -> None:
    status = document(0, 500, None, 0, placements=(PlacementView("llama", (3,)),))
    assert check_selection(Selection((0,)), status) == ("GPU-0",)
    assert check_selection(Selection.cpu(), status) == ()
    with pytest.raises(LoadRefused) as refused:
        check_selection(Selection((0, 1, 2, 3)), status)
    message = str(refused.value)
    assert message.startswith("refused: GPU 1 is occupied by someone else: 500 MiB used > 30 MiB; "
                              "PID 77 train.py (bob)")
    assert "GPU 2 is unavailable: memory use unreadable" in message and "GPU 3 holds model llama" in message
    assert "GPU 0" not in message
    with pytest.raises(BadSelection, match=r"GPU 7 does not exist \(GPUs here: 0, 1, 2, 3\)"):
        check_selection(Selection((0, 7)), status)


def test_gpu_selection_in_cpu_mode_is_refused_but_cpu_is_fine() -> None:
    cpu_mode = classify(Snapshot(taken_at=NOW, source="t", error="No devices were found"), 30)
    with pytest.raises(LoadRefused, match="no GPU available \\(No devices were found\\); load onto 'cpu' instead"):
        check_selection(Selection((0,)), cpu_mode)
    assert check_selection(Selection.cpu(), cpu_mode) == ()


def test_a_model_is_loaded_once() -> None:
    record = PlacementRecord(id=1, model_name="m", gpu_indexes=(1, 2), gpu_uuids=(None, None), pid=5,
                             process_start_time=1.0, port=None, started_at=NOW, owner=None,
                             state=ModelState.RUNNING)
    refuse_if_already_loaded("other", [record])
    with pytest.raises(LoadRefused, match=r"model m is already loaded \(running, on GPU 1, 2\); unload it first"):
        refuse_if_already_loaded("m", [record])


@pytest.mark.parametrize("indexes", [(0, 0), (-1,), (4096,), (True,)])
def test_a_selection_cannot_be_built_invalid(indexes: tuple[int, ...]) -> None:
    with pytest.raises(BadSelection):
        Selection(indexes)
