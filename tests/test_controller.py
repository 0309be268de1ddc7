"""Load / unload / supervision against a fake nvidia-smi that shows the fake models' processes on
the GPUs of their CUDA_VISIBLE_DEVICES, as real CUDA processes appear."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from gpuwarden.controller import Controller, build_controller
from gpuwarden.errors import (
    BadSelection,
    ControllerError,
    LoadRefused,
    NotLoaded,
    StateUnavailable,
    UnknownModel,
)
from gpuwarden.people import Actor, Channel
from gpuwarden.probe.shared import Freshness
from gpuwarden.probe.sources import make_source
from gpuwarden.process.host import LocalProcessHost
from gpuwarden.records import GpuState, Selection, parse_selection
from gpuwarden.store import Store
from tests.conftest import FAKE_MODELS, KILLED_EXIT_CODE, UNDER_WINE, FakeSmi, make_settings, model_command, wait_for


def controller_for(state_dir: Path, models: list[dict[str, Any]] | None = None, **overrides: Any) -> Controller:
    settings = make_settings(state_dir, models=FAKE_MODELS if models is None else models,
                             unload_timeout_seconds=3, **overrides)
    return build_controller(settings)


def model_pids(fake_smi: FakeSmi, gpus: list[int] | None = None) -> list[int]:
    pids = []
    for path in (fake_smi.dir / "procs").glob("*.json"):
        try:
            info = json.loads(path.read_text(encoding="utf-8"))
            process = psutil.Process(info["pid"])
            alive = process.status() != psutil.STATUS_ZOMBIE and abs(process.create_time() - info["created"]) < 0.01
        except (OSError, ValueError, psutil.Error):  # being written, or the process just ended
            continue
        if alive and (gpus is None or info["gpus"] == gpus):
            pids.append(info["pid"])
    return pids


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.Error:
        return True


@pytest.mark.parametrize(("value", "expected"), [
    ("1", (1,)), ("0,1", (0, 1)), (" 0 , 2 ", (0, 2)), ([0, 1], (0, 1)), (["3"], (3,)), ("cpu", None),
    ("CPU", None), (["cpu"], None)])
def test_parse_selection(value: object, expected: tuple[int, ...] | None) -> None:
    assert parse_selection(value) == (Selection.cpu() if expected is None else Selection(expected))


@pytest.mark.parametrize(("value", "message"), [
    ("", "empty"), ([], "empty"), ("0,0", "twice"), ("a", "invalid GPU index"), ("-1", "invalid GPU index"),
    ([True], "invalid"), ({"x": 1}, "must be"), ("0;rm -rf /", "invalid GPU index"), ([1.5], "invalid")])
def test_bad_selections(value: object, message: str) -> None:
    with pytest.raises(BadSelection, match=message):
        parse_selection(value)


def test_load_marks_model_loaded_and_disables_gpu_for_others(fake_smi: FakeSmi, tmp_path: Path) -> None:
    controller = controller_for(tmp_path / "state")
    view = controller.load("alpha", parse_selection("0"), actor=Actor("alice", admin=False, channel=Channel.CLI))
    assert (view.state, view.gpu_indexes, view.owner) == ("starting", (0,), "alice")
    assert wait_for(lambda: model_pids(fake_smi, [0]))  # the model really runs with CUDA_VISIBLE_DEVICES=0
    gpu0 = controller.status(Freshness.NOW).gpu(0)
    assert gpu0 is not None
    assert (gpu0.state, gpu0.model_name, gpu0.loadable) == (GpuState.MODEL_LOADED, "alpha", False)
    assert [p.model_name for p in gpu0.process_info] == ["alpha"]  # its process is its own, not foreign
    with pytest.raises(LoadRefused, match="GPU 0 holds model alpha"):
        controller.load("beta", parse_selection("0"))
    with pytest.raises(LoadRefused, match="already loaded"):
        controller.load("alpha", parse_selection("1"))
    assert wait_for(lambda: (controller.reconcile(), controller.models()[0].state)[1] == "running")
    controller.unload("alpha")
    assert controller.status().gpu(0).state is GpuState.IDLE  # type: ignore[union-attr]
    assert not model_pids(fake_smi)


def test_environment_given_to_the_model(fake_smi: FakeSmi, tmp_path: Path) -> None:
    out = tmp_path / "env.json"
    script = ("import json, os, sys; json.dump({k: os.environ.get(k) for k in ('CUDA_VISIBLE_DEVICES', "
              "'CUDA_DEVICE_ORDER', 'GPUWARDEN_MODEL', 'GPUWARDEN_MOCK_SMI', 'EXTRA')} | {'argv': sys.argv[1:]},"
              " open(sys.argv[1], 'w')); import time; time.sleep(30)")
    models = [{"name": "env", "command": [sys.executable, "-c", script, str(out), "{port}", "{gpus}", "{model}"],
               "env": {"EXTRA": "on {gpus}"}}]
    controller = controller_for(tmp_path / "state", models)
    os.environ["GPUWARDEN_MOCK_SMI"] = "leak"
    try:
        view = controller.load("env", parse_selection("0,1"))
    finally:
        del os.environ["GPUWARDEN_MOCK_SMI"]
    assert wait_for(out.exists)
    time.sleep(0.2)
    seen = json.loads(out.read_text(encoding="utf-8"))
    assert seen["CUDA_VISIBLE_DEVICES"] == "0,1" and seen["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    assert seen["GPUWARDEN_MODEL"] == "env" and seen["GPUWARDEN_MOCK_SMI"] is None
    assert seen["EXTRA"] == "on 0,1"
    assert seen["argv"] == [str(out), str(view.port), "0,1", "env"]
    controller.unload("env")


def test_foreign_process_appearing_before_load_is_refused(fake_smi: FakeSmi, tmp_path: Path) -> None:
    controller = controller_for(tmp_path / "state")
    assert controller.status(Freshness.NOW).gpu(1).loadable  # type: ignore[union-attr]  # user sees idle GPU 1
    intruder = fake_smi.add_foreign("1", mib=800, name="python3")  # ... someone starts a job meanwhile
    with pytest.raises(LoadRefused) as refused:
        controller.load("alpha", parse_selection("1"))
    message = str(refused.value)
    assert "GPU 1" in message and "occupied by someone else" in message
    assert f"PID {intruder.pid}" in message and "python3" in message
    if not UNDER_WINE:  # WINE_HIDES_USERS
        assert psutil.Process().username() in message
    assert not model_pids(fake_smi, [1]) or model_pids(fake_smi, [1]) == [intruder.pid]
    assert controller.models()[0].state == "not_loaded"


def test_concurrent_loads_onto_one_gpu_exactly_one_wins(fake_smi: FakeSmi, tmp_path: Path) -> None:
    models = [{"name": f"m{i}", "command": model_command("--mib", "500")} for i in range(20)]
    # Two controllers on one state_dir, like the server and a CLI at once.
    controllers = [controller_for(tmp_path / "state", models), controller_for(tmp_path / "state", models)]
    barrier = threading.Barrier(20)
    results: list[str] = []

    def attempt(i: int) -> None:
        barrier.wait()
        try:
            controllers[i % 2].load(f"m{i}", parse_selection("0"))
            results.append("ok")
        except ControllerError as error:
            results.append(type(error).__name__)

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert results.count("ok") == 1, results
    assert results.count("GpusBusy") == 19  # a LoadRefused: the GPU is busy (a load that may wait would queue)
    assert wait_for(lambda: len(model_pids(fake_smi)) == 1)
    time.sleep(0.5)
    assert len(model_pids(fake_smi)) == 1
    with controllers[0].store.read() as tx:
        assert len(tx.active_placements()) == 1


def test_multi_gpu_load_marks_both_and_unload_frees_both(fake_smi: FakeSmi, tmp_path: Path) -> None:
    controller = controller_for(tmp_path / "state")
    controller.load("gamma", parse_selection([0, 1]))
    assert wait_for(lambda: len(model_pids(fake_smi)) == 2)  # the model and its child (a tree)
    status = controller.status(Freshness.NOW)
    assert [(g.state, g.model_name) for g in status.gpus] == [(GpuState.MODEL_LOADED, "gamma")] * 2
    for other in ("0", "1"):
        with pytest.raises(LoadRefused, match="holds model gamma"):
            controller.load("alpha", parse_selection(other))
    controller.unload("gamma")
    assert wait_for(lambda: not model_pids(fake_smi), 5)  # the whole tree is gone, grandchild included
    assert [g.state for g in controller.status().gpus] == [GpuState.IDLE] * 2


def test_unload_forces_a_model_that_ignores_sigterm(fake_smi: FakeSmi, tmp_path: Path) -> None:
    models = [{"name": "stubborn", "command": model_command("--ignore-term")}]
    controller = controller_for(tmp_path / "state", models)
    controller.load("stubborn", parse_selection("0"))
    assert wait_for(lambda: model_pids(fake_smi))
    started = time.monotonic()
    controller.unload("stubborn")
    elapsed = time.monotonic() - started
    if sys.platform == "win32":  # TerminateProcess: nothing to ignore, nothing to wait for
        assert elapsed < 15
    else:
        assert 2.5 < elapsed < 15  # waited unload_timeout_seconds (3 s), then killed
    assert not model_pids(fake_smi)
    with pytest.raises(NotLoaded, match="not loaded"):
        controller.unload("stubborn")


def test_killed_model_is_failed_and_freed_within_seconds(fake_smi: FakeSmi, tmp_path: Path) -> None:
    controller = controller_for(tmp_path / "state")
    controller.load("alpha", parse_selection("1"))
    assert wait_for(lambda: model_pids(fake_smi, [1]))
    [pid] = model_pids(fake_smi, [1])
    psutil.Process(pid).kill()  # SIGKILL; TerminateProcess on Windows
    started = time.monotonic()
    assert wait_for(lambda: (controller.reconcile(), controller.models()[0].state)[1] == "failed", 5)
    assert time.monotonic() - started < 5
    view = controller.models()[0]
    if KILLED_EXIT_CODE is not None:
        assert view.exit_code == KILLED_EXIT_CODE and "exited with code -9" in (view.error or "")
    else:
        assert view.exit_code not in (None, 0) and f"exited with code {view.exit_code}" in (view.error or "")
    assert "fake model pid" in (view.log_tail or "")
    assert controller.status(Freshness.NOW).gpu(1).state is GpuState.IDLE  # type: ignore[union-attr]


def test_model_that_exits_with_an_error_is_failed(fake_smi: FakeSmi, tmp_path: Path) -> None:
    models = [{"name": "crashy", "command": model_command("--exit-after", "0.3", "--exit-code", "7")}]
    controller = controller_for(tmp_path / "state", models)
    controller.load("crashy", parse_selection("0"))
    assert wait_for(lambda: (controller.reconcile(), controller.models()[0].state)[1] == "failed")
    assert controller.models()[0].exit_code == 7


def test_restart_readopts_running_model(fake_smi: FakeSmi, tmp_path: Path) -> None:
    first = controller_for(tmp_path / "state")
    first.load("alpha", parse_selection("0"))
    assert wait_for(lambda: model_pids(fake_smi, [0]))
    del first  # gpuwarden stops; the model keeps running
    second = controller_for(tmp_path / "state")
    second.reconcile(at_startup=True)
    view = second.models()[0]
    assert view.state in ("starting", "running") and view.gpu_indexes == (0,)
    assert second.status(Freshness.NOW).gpu(0).model_name == "alpha"  # type: ignore[union-attr]
    second.unload("alpha")
    assert not model_pids(fake_smi)


def test_reused_pid_is_not_adopted(fake_smi: FakeSmi, tmp_path: Path) -> None:
    controller = controller_for(tmp_path / "state")
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        with controller.store.exclusive() as tx:
            from datetime import UTC, datetime

            tx.insert_placement(model_name="alpha", gpu_indexes=(0,), gpu_uuids=(None,), pid=other.pid,
                                process_start_time=psutil.Process(other.pid).create_time() - 3600, port=None,
                                started_at=datetime.now(UTC), owner="x", log_path=str(tmp_path / "x.log"))
        restarted = controller_for(tmp_path / "state")
        restarted.reconcile(at_startup=True)
        view = restarted.models()[0]
        assert view.state == "stopped" and "not running when gpuwarden started" in (view.error or "")
        assert other.poll() is None  # the unrelated process was left alone
        assert restarted.status(Freshness.NOW).gpu(0).state is GpuState.IDLE  # type: ignore[union-attr]
    finally:
        other.kill()
        other.wait()


def test_missing_command_is_a_clear_error_and_leaves_nothing(fake_smi: FakeSmi, tmp_path: Path) -> None:
    models = [{"name": "ghost", "command": ["/nonexistent/llama-server", "--port", "{port}"]},
              {"name": "ghost2", "command": ["no-such-program-anywhere"]}]
    controller = controller_for(tmp_path / "state", models)
    for name in ("ghost", "ghost2"):
        with pytest.raises(ControllerError, match="command not found"):
            controller.load(name, parse_selection("0"))
    with controller.store.read() as tx:
        assert tx.active_placements() == []
    assert controller.status().gpu(0).state is GpuState.IDLE  # type: ignore[union-attr]


def test_unknown_model_and_bad_gpu_index(fake_smi: FakeSmi, tmp_path: Path) -> None:
    controller = controller_for(tmp_path / "state")
    with pytest.raises(UnknownModel, match="unknown model"):
        controller.load("nope", parse_selection("0"))
    with pytest.raises(BadSelection, match="GPU 5 does not exist"):
        controller.load("alpha", parse_selection("5"))


def test_cpu_load_and_cpu_mode(fake_smi: FakeSmi, tmp_path: Path) -> None:
    fake_smi.set_mode("nodevices")
    controller = controller_for(tmp_path / "state")
    assert controller.status(Freshness.NOW).cpu_mode
    with pytest.raises(LoadRefused, match="no GPU available"):
        controller.load("alpha", parse_selection("0"))
    view = controller.load("alpha", parse_selection("cpu"))
    assert view.on_cpu and view.gpu_indexes == ()
    assert wait_for(lambda: model_pids(fake_smi, []))  # CUDA_VISIBLE_DEVICES was empty
    controller.unload("alpha")


def test_corrupt_state_database(fake_smi: FakeSmi, tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "gpuwarden.db").write_bytes(b"this is not a database" * 100)
    controller = controller_for(state)
    status = controller.status(Freshness.NOW)  # GPU status still shown
    assert status.total_gpus == 2 and any("placements unknown" in w for w in status.warnings)
    with pytest.raises(StateUnavailable, match="unusable"):
        controller.models()
    with pytest.raises(StateUnavailable):
        controller.load("alpha", parse_selection("0"))
    assert not model_pids(fake_smi)
    assert (state / "gpuwarden.db").read_bytes().startswith(b"this is not a database")  # nothing lost


def test_damaged_row_in_state_database(fake_smi: FakeSmi, tmp_path: Path) -> None:
    controller = controller_for(tmp_path / "state")
    controller.status()
    with sqlite3.connect(tmp_path / "state" / "gpuwarden.db") as db:
        db.execute("INSERT INTO placements (model_name, gpu_indexes, gpu_uuids, started_at, state)"
                   " VALUES ('alpha', 'not json', '[]', 'x', 'running')")
    status = controller.status()
    assert status.total_gpus == 2 and any("damaged" in w for w in status.warnings)
    with pytest.raises(StateUnavailable, match="damaged"):
        controller.load("alpha", parse_selection("0"))


def test_locked_state_database(fake_smi: FakeSmi, tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "state", models=FAKE_MODELS)
    controller = Controller(settings, make_source(settings), Store(tmp_path / "state" / "gpuwarden.db", 0.5),
                            LocalProcessHost(tmp_path / "state" / "logs"))
    controller.status()
    holder = sqlite3.connect(tmp_path / "state" / "gpuwarden.db", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        started = time.monotonic()
        with pytest.raises(StateUnavailable, match="busy or locked"):
            controller.load("alpha", parse_selection("0"))
        assert time.monotonic() - started < 5
        assert controller.status(Freshness.NOW).total_gpus == 2
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert not model_pids(fake_smi)


def test_health_url_gates_running(fake_smi: FakeSmi, tmp_path: Path) -> None:
    models = [{"name": "web", "command": [sys.executable, "-m", "gpuwarden.demo.model_server", "--port", "{port}",
                                          "--startup-seconds", "1"],
               "health_url": "http://127.0.0.1:{port}/health", "startup_timeout_seconds": 30},
              {"name": "never", "command": model_command(), "health_url": "http://127.0.0.1:{port}/health",
               "startup_timeout_seconds": 1}]
    controller = controller_for(tmp_path / "state", models)
    controller.load("web", parse_selection("0"))
    controller.reconcile()
    assert controller.models()[0].state == "starting"
    assert wait_for(lambda: (controller.reconcile(), controller.models()[0].state)[1] == "running", 15)
    controller.load("never", parse_selection("1"))
    assert wait_for(lambda: (controller.reconcile(), controller.models()[1].state)[1] == "failed", 10)
    assert "health check did not pass" in (controller.models()[1].error or "")
    assert not model_pids(fake_smi, [1])
    controller.unload("web")


def test_model_removed_from_config_can_still_be_unloaded(fake_smi: FakeSmi, tmp_path: Path) -> None:
    controller_for(tmp_path / "state").load("alpha", parse_selection("0"))
    assert wait_for(lambda: model_pids(fake_smi, [0]))
    reconfigured = controller_for(tmp_path / "state", [m for m in FAKE_MODELS if m["name"] != "alpha"])
    reconfigured.reconcile(at_startup=True)
    assert reconfigured.status(Freshness.NOW).gpu(0).model_name == "alpha"  # type: ignore[union-attr]
    assert reconfigured.unload("alpha").state == "stopped"
    assert not model_pids(fake_smi)
    with pytest.raises(UnknownModel):
        reconfigured.unload("alpha")


def test_the_real_host_finds_a_launcher_by_its_log_path(fake_smi: FakeSmi, tmp_path: Path) -> None:
    controller = controller_for(tmp_path / "state")
    view = controller.load("alpha", parse_selection("0"))
    assert view.log_path is not None
    found = controller.processes.find_launcher(Path(view.log_path))
    assert found is not None and found[0] == view.pid
    assert controller.processes.alive(*found)  # the same process: PID and start time
    assert controller.processes.find_launcher(tmp_path / "no-such.log") is None
    controller.unload("alpha")
    assert controller.processes.find_launcher(Path(view.log_path)) is None


KILL_CYCLES = int(os.environ.get("GPUWARDEN_KILL_CYCLES", "30"))


@pytest.mark.timeout(600)  # 30 cycles of starting a model: about 2 minutes under Wine
def test_killing_the_pid_shown_or_its_launcher_leaves_nothing_running(fake_smi: FakeSmi, tmp_path: Path) -> None:
    """Load, kill -9 the PID `gpuwarden models` shows (the model) or its launcher, again and again:
    nothing runs on untracked, and the GPU is free again within 5 s each time."""
    controller = controller_for(tmp_path / "state")
    for cycle in range(KILL_CYCLES):
        controller.load("alpha", parse_selection("0"))
        assert wait_for(lambda: controller.models()[0].model_pid is not None and model_pids(fake_smi, [0]))
        shown = controller.models()[0]
        assert shown.model_pid in model_pids(fake_smi, [0])  # the PID shown is the model's own
        target = shown.model_pid if cycle % 2 == 0 else shown.pid  # the model, or its launcher
        psutil.Process(target).kill()
        started = time.monotonic()
        assert wait_for(lambda: (controller.reconcile(), controller.models()[0].state)[1] == "failed", 5), cycle
        assert wait_for(lambda: not model_pids(fake_smi), 5), cycle
        assert controller.status(Freshness.NOW).gpu(0).loadable, cycle  # type: ignore[union-attr]
        assert time.monotonic() - started < 5, cycle


@pytest.mark.skipif(sys.platform != "linux", reason="process groups and the parent-death signal are Linux here")
def test_a_wrapped_model_is_stopped_with_its_killed_launcher(fake_smi: FakeSmi, tmp_path: Path) -> None:
    """`sh -c "python server.py; true"`: the server is the wrapper's child, not the launcher's. Kill
    the launcher: the wrapper dies of the parent-death signal, and supervision stops the server."""
    wrapped = f"{sys.executable} {model_command('--mib', '600')[1]} --mib 600; true"
    models = [{"name": "wrapped", "command": ["sh", "-c", wrapped], "startup_grace_seconds": 0.3}]
    controller = controller_for(tmp_path / "state", models)
    controller.load("wrapped", parse_selection("0"))
    assert wait_for(lambda: model_pids(fake_smi, [0]))
    psutil.Process(controller.models()[0].pid).kill()  # the launcher
    assert wait_for(lambda: (controller.reconcile(), controller.models()[0].state)[1] == "failed", 10)
    assert wait_for(lambda: not model_pids(fake_smi), 5)
    assert controller.status(Freshness.NOW).gpu(0).loadable  # type: ignore[union-attr]


@pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_PDEATHSIG is Linux")
def test_the_model_dies_with_its_launcher_even_without_supervision(fake_smi: FakeSmi, tmp_path: Path) -> None:
    controller = controller_for(tmp_path / "state")
    controller.load("alpha", parse_selection("0"))
    assert wait_for(lambda: controller.models()[0].model_pid is not None and model_pids(fake_smi, [0]))
    view = controller.models()[0]
    psutil.Process(view.pid).kill()
    assert wait_for(lambda: gone(view.model_pid or 0), 5)  # no reconcile here
    controller.reconcile()


def test_unload_lets_the_launcher_write_its_exit_record(fake_smi: FakeSmi, tmp_path: Path) -> None:
    """The Windows order (children first, then the launcher exits by itself), run here: over several
    unloads every exit record is written whole, and no temporary file is left behind."""
    settings = make_settings(tmp_path / "state", models=FAKE_MODELS, unload_timeout_seconds=3)
    controller = Controller(settings, make_source(settings), Store(tmp_path / "state" / "gpuwarden.db"),
                            LocalProcessHost(tmp_path / "state" / "logs", staged_stop=True))
    for _ in range(5):
        controller.load("alpha", parse_selection("0"))
        assert wait_for(lambda: controller.models()[0].model_pid is not None and model_pids(fake_smi, [0]))
        view = controller.unload("alpha")
        assert view.state == "stopped" and not model_pids(fake_smi)
        latest = controller.models()[0]
        assert latest.exit_code is not None, latest  # the launcher recorded how the model ended
    logs = list((tmp_path / "state" / "logs").iterdir())
    assert len([p for p in logs if p.name.endswith(".exit.json")]) == 5
    assert not [p for p in logs if p.name.endswith(".tmp")]
