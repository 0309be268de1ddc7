"""Reserve first, launch second (#12): a model that was launched is never left running unrecorded,
whatever fails between its launch and its record, and a cut-off unload is finished on restart."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import pytest

from gpuwarden.errors import LoadRefused, StateUnavailable
from gpuwarden.process import Launched
from gpuwarden.process.fake import FakeProcess, FakeProcessHost
from gpuwarden.records import ModelState, Selection
from tests.test_controller_lifecycle import Rig

GPU0 = Selection.gpus(0)


class CutOff(BaseException):
    """gpuwarden killed right after the launch (nothing after it runs)."""


class HookedHost(FakeProcessHost):
    """Runs ``after_launch`` once the fake process exists, as a failure injected between the
    launch and its record."""

    after_launch: Callable[[Launched], None] | None = None

    def launch(self, *, model_name: str, argv: Sequence[str], env: Mapping[str, str], cwd: Path,
               log_path: Path) -> Launched:
        launched = super().launch(model_name=model_name, argv=argv, env=env, cwd=cwd, log_path=log_path)
        if self.after_launch is not None:
            self.after_launch(launched)
        return launched


def running(rig: Rig) -> list[int]:
    return [p.pid for p in rig.host.processes.values() if p.running]


def rig_with_hook(tmp_path: Path, hook: Callable[[Rig, Launched], None]) -> Rig:
    host = HookedHost(tmp_path / "logs")
    rig = Rig(tmp_path / "state", host=host, busy_timeout_seconds=0.3)
    host.after_launch = lambda launched: hook(rig, launched)
    return rig


def cut_off_load(tmp_path: Path) -> tuple[Rig, FakeProcess]:
    """A load of alpha onto GPU 0 cut off right after its launch (gpuwarden killed): its launcher."""
    def die(rig: Rig, launched: Launched) -> None:
        raise CutOff

    rig = rig_with_hook(tmp_path, die)
    with pytest.raises(CutOff):
        rig.controller.load("alpha", GPU0)
    return rig, rig.host.process("alpha")


def test_the_gpus_are_reserved_before_the_launch(tmp_path: Path) -> None:
    seen: list[tuple[ModelState, int | None]] = []

    def look(rig: Rig, launched: Launched) -> None:
        with rig.controller.store.read() as tx:
            [record] = tx.active_placements()
        seen.append((record.state, record.pid))
        with pytest.raises(LoadRefused, match="GPU 0 holds model alpha"):  # the reservation already counts
            rig.new_controller().load("web", GPU0)

    rig = rig_with_hook(tmp_path, look)
    rig.controller.load("alpha", GPU0)
    assert seen == [(ModelState.STARTING, None)]
    assert rig.view("alpha").pid == rig.host.process("alpha").pid  # recorded after the launch


def test_a_locked_database_after_the_launch_stops_the_model(tmp_path: Path) -> None:
    holders: list[sqlite3.Connection] = []

    def lock(rig: Rig, launched: Launched) -> None:
        holder = sqlite3.connect(rig.settings.state_dir / "gpuwarden.db", isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")
        holders.append(holder)

    rig = rig_with_hook(tmp_path, lock)
    with pytest.raises(StateUnavailable, match="it was stopped again"):
        rig.controller.load("alpha", GPU0)
    assert running(rig) == [] and rig.host.stops == [rig.host.process("alpha").pid]
    holders[0].execute("ROLLBACK")
    holders[0].close()
    assert rig.state("alpha") is ModelState.STARTING  # the give-up could not be written either ...
    rig.clock.advance(31)
    rig.controller.reconcile()  # ... so supervision gives the load up: no launcher runs for it
    view = rig.view("alpha")
    assert view.state is ModelState.FAILED and "cut off before its process was recorded" in (view.error or "")


def test_an_unload_during_the_launch_wins(tmp_path: Path) -> None:
    rig = rig_with_hook(tmp_path, lambda rig, launched: rig.new_controller().unload("alpha") and None)
    with pytest.raises(LoadRefused, match="unloaded while it started; it was stopped again"):
        rig.controller.load("alpha", GPU0)
    assert running(rig) == [] and rig.state("alpha") is ModelState.STOPPED


def test_a_load_cut_off_after_its_launch_is_found_and_adopted(tmp_path: Path) -> None:
    rig, launcher = cut_off_load(tmp_path)
    pid = launcher.pid
    restarted = rig.new_controller()
    restarted.reconcile(at_startup=True)
    assert rig.state("alpha") is ModelState.STARTING and rig.view("alpha").pid is None  # maybe still launching
    rig.clock.advance(31)
    assert restarted.reconcile() is True
    assert rig.view("alpha").pid == pid  # its launcher was found by its log path and recorded
    restarted.reconcile()
    assert rig.state("alpha") is ModelState.RUNNING
    assert restarted.unload("alpha").state is ModelState.STOPPED and running(rig) == []


def test_an_unload_cut_off_is_finished_when_gpuwarden_starts(tmp_path: Path) -> None:
    rig = Rig(tmp_path / "state")
    rig.controller.load("alpha", GPU0)
    pid = rig.host.process("alpha").pid
    with rig.controller.store.exclusive() as tx:
        [record] = tx.active_placements()
        tx.set_state(record.id, ModelState.STOPPING)  # then gpuwarden was killed before stopping it
    rig.new_controller().reconcile(at_startup=True)
    assert rig.host.stops == [pid] and running(rig) == []
    assert rig.state("alpha") is ModelState.STOPPED


def test_a_database_corrupted_after_the_launch_stops_the_model(tmp_path: Path) -> None:
    def corrupt(rig: Rig, launched: Launched) -> None:
        (rig.settings.state_dir / "gpuwarden.db").write_bytes(b"not a database any more" * 200)

    rig = rig_with_hook(tmp_path, corrupt)
    with pytest.raises(StateUnavailable, match="it was stopped again"):
        rig.controller.load("alpha", GPU0)
    assert running(rig) == [] and rig.host.stops == [rig.host.process("alpha").pid]


def test_unloading_a_load_cut_off_after_its_launch_stops_what_it_launched(tmp_path: Path) -> None:
    rig, launcher = cut_off_load(tmp_path)
    assert rig.controller.unload("alpha").state is ModelState.STOPPED  # no PID recorded: found by its log
    assert launcher.pid in rig.host.stops and running(rig) == [] and not launcher.model_running


def test_a_given_up_load_stops_a_model_that_outlived_its_launcher(tmp_path: Path) -> None:
    rig, launcher = cut_off_load(tmp_path)
    rig.host.kill_launcher(launcher.pid)  # the model runs on
    rig.clock.advance(31)
    rig.controller.reconcile()
    assert not launcher.model_running and launcher.model_pid in rig.host.stops
    assert rig.state("alpha") is ModelState.FAILED


def test_a_slow_loader_whose_launch_supervision_adopted_keeps_its_model(tmp_path: Path) -> None:
    def slow(rig: Rig, launched: Launched) -> None:
        rig.clock.advance(31)  # the loader stalls past the grace ...
        assert rig.new_controller().reconcile() is True  # ... and supervision records its launcher

    rig = rig_with_hook(tmp_path, slow)
    view = rig.controller.load("alpha", GPU0)
    assert view.state is ModelState.STARTING and view.pid == rig.host.process("alpha").pid
    assert rig.host.stops == [] and running(rig) == [view.pid]
