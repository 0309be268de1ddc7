"""The controller's lifecycle branches, fast: a FakeProcessHost instead of real processes, a mock
GPU source, a real state database and a clock the test moves."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from gpuwarden.config import Settings
from gpuwarden.controller import Controller
from gpuwarden.errors import ControllerError, LoadRefused, NotLoaded
from gpuwarden.people import Actor, Channel
from gpuwarden.probe.mock import MockSource
from gpuwarden.process.fake import FakeProcessHost
from gpuwarden.records import ModelState, Selection
from gpuwarden.store import Store
from tests.conftest import make_settings

TWO_IDLE_GPUS = "0, 1 MiB\n1, 1 MiB\n"


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


class Rig:
    """A controller on fakes, and the handles a test needs to drive them."""

    def __init__(self, state_dir: Path, models: list[dict[str, Any]] | None = None,
                 host: FakeProcessHost | None = None, busy_timeout_seconds: float = 30.0) -> None:
        self.clock = Clock()
        self.host = host or FakeProcessHost(state_dir / "logs")
        self.busy_timeout_seconds = busy_timeout_seconds
        self.settings: Settings = make_settings(state_dir, models=models or [
            {"name": "alpha", "command": ["server", "--port", "{port}"], "startup_grace_seconds": 2},
            {"name": "web", "command": ["server", "--port", "{port}"], "health_url": "http://127.0.0.1:{port}/health",
             "startup_timeout_seconds": 60},
        ])
        self.controller = self.new_controller()

    def new_controller(self) -> Controller:
        """Another Controller on the same state (a restart of gpuwarden, or a CLI call beside the server)."""
        source = MockSource(text=TWO_IDLE_GPUS, clock=self.clock)
        store = Store(self.settings.state_dir / "gpuwarden.db", self.busy_timeout_seconds)
        return Controller(self.settings, source, store, self.host, clock=self.clock)

    def state(self, name: str) -> ModelState:
        return next(view for view in self.controller.models() if view.name == name).state

    def view(self, name: str) -> Any:
        return next(view for view in self.controller.models() if view.name == name)


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    return Rig(tmp_path / "state")


GPU0 = Selection.gpus(0)


def test_load_starts_the_plan_and_grace_makes_it_running(rig: Rig) -> None:
    view = rig.controller.load("alpha", GPU0, actor=Actor("alice", admin=False, channel=Channel.CLI))
    process = rig.host.process("alpha")
    assert process.argv == ("server", "--port", str(view.port))
    assert process.env["CUDA_VISIBLE_DEVICES"] == "0" and process.env["GPUWARDEN_MODEL"] == "alpha"
    assert view.state is ModelState.STARTING
    rig.controller.reconcile()
    assert rig.state("alpha") is ModelState.STARTING  # not alive long enough yet
    rig.clock.advance(2.5)
    assert rig.controller.reconcile() is True
    assert rig.state("alpha") is ModelState.RUNNING
    assert rig.controller.reconcile() is False  # nothing new


def test_model_that_exits_with_code_zero_is_stopped_not_failed(rig: Rig) -> None:
    rig.controller.load("alpha", GPU0)
    rig.host.exit(rig.host.process("alpha").pid, 0)
    assert rig.controller.reconcile()
    view = rig.view("alpha")
    assert (view.state, view.exit_code, view.error) == (ModelState.STOPPED, 0,
                                                        "the model exited by itself (exit code 0)")


def test_model_that_exits_with_an_error_is_failed_with_its_log(rig: Rig) -> None:
    rig.controller.load("alpha", GPU0)
    pid = rig.host.process("alpha").pid
    rig.host.log(pid, "loading weights", "CUDA error: out of memory")
    rig.host.exit(pid, 3)
    rig.controller.reconcile()
    view = rig.view("alpha")
    assert (view.state, view.exit_code, view.error) == (ModelState.FAILED, 3, "the model exited with code 3")
    assert view.log_tail == "loading weights\nCUDA error: out of memory"
    assert rig.controller.status().gpu(0).loadable  # type: ignore[union-attr]  # its GPU is free again


def test_launcher_error_is_kept(rig: Rig) -> None:
    rig.controller.load("alpha", GPU0)
    rig.host.exit(rig.host.process("alpha").pid, 127, "cannot start 'server': No such file")
    rig.controller.reconcile()
    assert rig.view("alpha").error == "cannot start 'server': No such file"


def test_vanished_process_is_failed_while_running_but_stopped_at_startup(rig: Rig) -> None:
    rig.controller.load("alpha", GPU0)
    rig.host.vanish(rig.host.process("alpha").pid)
    rig.controller.reconcile()
    view = rig.view("alpha")
    assert (view.state, view.exit_code) == (ModelState.FAILED, None)
    assert "disappeared" in (view.error or "")

    rig.controller.load("alpha", GPU0)
    rig.host.vanish(rig.host.process("alpha").pid)
    restarted = rig.new_controller()  # gpuwarden starts after the machine restarted
    restarted.reconcile(at_startup=True)
    assert rig.view("alpha").state is ModelState.STOPPED
    assert "not running when gpuwarden started" in (rig.view("alpha").error or "")


def test_reused_pid_is_never_adopted_nor_stopped(rig: Rig) -> None:
    rig.controller.load("alpha", GPU0)
    pid = rig.host.process("alpha").pid
    rig.host.reuse_pid(pid)
    restarted = rig.new_controller()
    restarted.reconcile(at_startup=True)
    assert rig.state("alpha") is ModelState.STOPPED
    assert rig.host.alive(pid, None) and rig.host.stops == []  # the stranger was left alone


def test_restart_adopts_a_model_that_still_runs(rig: Rig) -> None:
    rig.controller.load("alpha", GPU0)
    restarted = rig.new_controller()
    assert restarted.reconcile(at_startup=True) is False
    assert restarted.status().gpu(0).model_names == ("alpha",)  # type: ignore[union-attr]


def test_stuck_in_stopping_resolves_either_way(rig: Rig) -> None:
    """An unload was cut off (its CLI killed) after the placement was marked stopping."""
    rig.controller.load("alpha", GPU0)
    pid = rig.host.process("alpha").pid
    with rig.controller.store.exclusive() as tx:
        [record] = tx.active_placements()
        tx.set_state(record.id, ModelState.STOPPING)
    assert rig.state("alpha") is ModelState.STOPPING
    rig.controller.reconcile()
    assert rig.state("alpha") is ModelState.STOPPING  # still alive: nothing guessed
    assert rig.controller.unload("alpha").state is ModelState.STOPPED  # a second unload finishes it
    assert rig.host.stops == [pid]

    rig.controller.load("alpha", GPU0)
    second = rig.host.process("alpha").pid
    with rig.controller.store.exclusive() as tx:
        [record] = tx.active_placements()
        tx.set_state(record.id, ModelState.STOPPING)
    rig.host.exit(second, -15)
    rig.controller.reconcile()
    view = rig.view("alpha")
    assert (view.state, view.exit_code, view.error) == (ModelState.STOPPED, -15, None)


def test_health_check_gates_running_and_times_out(rig: Rig) -> None:
    view = rig.controller.load("web", GPU0)
    url = f"http://127.0.0.1:{view.port}/health"
    rig.clock.advance(30)
    rig.controller.reconcile()
    assert rig.state("web") is ModelState.STARTING  # alive is not enough with a health URL
    rig.host.healthy_urls.add(url)
    rig.controller.reconcile()
    assert rig.state("web") is ModelState.RUNNING
    rig.controller.unload("web")

    rig.host.healthy_urls.clear()
    rig.controller.load("web", GPU0)
    pid = rig.host.process("web").pid
    rig.clock.advance(61)
    rig.controller.reconcile()
    view = rig.view("web")
    assert view.state is ModelState.FAILED and "did not pass within 60 s" in (view.error or "")
    assert rig.host.stops[-1] == pid and not rig.host.alive(pid, None)


def test_unload_stops_the_tree_and_records_how_it_ended(rig: Rig) -> None:
    rig.host.stop_exit_code = -15
    rig.controller.load("alpha", GPU0)
    pid = rig.host.process("alpha").pid
    rig.host.log(pid, "serving")
    view = rig.controller.unload("alpha")
    assert (view.state, rig.host.stops) == (ModelState.STOPPED, [pid])
    latest = rig.view("alpha")
    assert (latest.exit_code, latest.log_tail) == (-15, "serving")
    with pytest.raises(NotLoaded):
        rig.controller.unload("alpha")


def test_launch_failure_records_nothing(rig: Rig) -> None:
    rig.host.launch_error = "command not found: 'server'"
    announced = rig.controller.changes.version
    with pytest.raises(ControllerError, match="command not found"):
        rig.controller.load("alpha", GPU0)
    assert rig.state("alpha") is ModelState.NOT_LOADED
    assert rig.controller.changes.version > announced  # the reservation came and went: dashboards hear
    announced = rig.controller.changes.version
    with pytest.raises(ControllerError, match="unknown model"):
        rig.controller.load("nope", GPU0)
    assert rig.controller.changes.version == announced  # a refusal before any reservation changed nothing
    rig.host.launch_error = None
    rig.controller.load("alpha", GPU0)
    with pytest.raises(LoadRefused, match="already loaded"):
        rig.controller.load("alpha", Selection.gpus(1))


def test_own_processes_come_from_the_host_tree(rig: Rig) -> None:
    rig.controller.load("alpha", GPU0)
    pid = rig.host.process("alpha").pid
    child = rig.host.spawn_child(pid)
    with rig.controller.store.read() as tx:
        records = tx.active_placements()
    [placement] = rig.controller.placement_views(records)
    assert placement.own_pids == frozenset({pid, rig.host.process("alpha").model_pid, child})
    rig.host.vanish(pid)
    [placement] = rig.controller.placement_views(records)
    assert placement.own_pids == frozenset()


def test_load_without_selection_takes_idle_gpus_inside_the_lock(tmp_path: Path) -> None:
    models = [{"name": n, "command": ["server"], "startup_grace_seconds": 0} for n in ("a", "b", "c")]
    rig = Rig(tmp_path / "state", models)
    assert rig.controller.load("a").gpu_indexes == (0,)
    assert rig.controller.load("b").gpu_indexes == (1,)  # the first idle GPU now, not a stale choice
    with pytest.raises(LoadRefused, match=r"model c wants 1 GPU\(s\); idle now: none"):
        rig.controller.load("c")
    assert rig.state("c") is ModelState.NOT_LOADED


def test_a_killed_launcher_never_leaves_its_model_running_untracked(rig: Rig) -> None:
    rig.controller.load("alpha", GPU0)
    launcher = rig.host.process("alpha")
    assert rig.view("alpha").model_pid == launcher.model_pid  # users see the model's own PID
    rig.host.kill_launcher(launcher.pid)  # what `kill -9 <the PID gpuwarden showed>` did before
    with rig.controller.store.read() as tx:
        [placement] = rig.controller.placement_views(tx.active_placements())
    assert launcher.model_pid in placement.own_pids  # still its own, never "someone else"
    assert rig.controller.reconcile() is True
    assert rig.host.stops == [launcher.model_pid] and not launcher.model_running
    view = rig.view("alpha")
    assert view.state is ModelState.FAILED and f"launcher (PID {launcher.pid}) was killed" in (view.error or "")
    assert rig.controller.status().gpu(0).loadable  # type: ignore[union-attr]


def test_unload_stops_a_model_whose_launcher_is_gone(rig: Rig) -> None:
    rig.controller.load("alpha", GPU0)
    launcher = rig.host.process("alpha")
    rig.host.kill_launcher(launcher.pid)
    assert rig.controller.unload("alpha").state is ModelState.STOPPED
    assert not launcher.model_running and launcher.model_pid in rig.host.stops


def test_each_change_is_announced_once_and_others_changes_are_taken(rig: Rig) -> None:
    """A change made here is pushed to the dashboards when it is made; supervision does not announce
    it again. A change another process made (the CLI: another store on the same file) is announced
    by supervision, and its settings are taken."""
    controller = rig.controller
    controller.reconcile(at_startup=True)
    announced = controller.changes.version
    controller.load("alpha", GPU0)
    controller.update_settings({"memory_threshold_mib": 50})
    controller.unload("alpha")
    assert controller.changes.version > announced
    announced = controller.changes.version
    assert controller.reconcile() is False and controller.changes.version == announced
    rig.new_controller().update_settings({"memory_threshold_mib": 70})  # the CLI, beside the server
    assert controller.reconcile() is True and controller.changes.version == announced + 1
    assert controller.runtime.memory_threshold_mib == 70
    controller.load("alpha", GPU0)
    cli = rig.new_controller()
    with cli.store.exclusive() as tx:  # another process's change between two of ours
        tx.save_settings({"memory_threshold_mib": 90})
    controller.unload("alpha")
    assert controller.reconcile() is True and controller.runtime.memory_threshold_mib == 90
