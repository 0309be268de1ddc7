"""Each model's whole process tree is stopped, also the processes whose parent has already exited:
Windows holds them in a job object (gpuwarden.process.jobs), POSIX in the launcher's process group.
The stop request the host hands the launcher (the graceful stop Windows needs) is tested everywhere."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from gpuwarden.controller import Controller, build_controller
from gpuwarden.probe.shared import Freshness
from gpuwarden.probe.sources import make_source
from gpuwarden.process import jobs
from gpuwarden.process.exitrecord import exit_path_for
from gpuwarden.process.host import LocalProcessHost
from gpuwarden.records import GpuState, parse_selection
from gpuwarden.store import Store
from tests.conftest import UNDER_WINE, FakeSmi, make_settings, model_command, wait_for

windows_only = pytest.mark.skipif(sys.platform != "win32", reason="job objects are Windows")


def controller_for(state_dir: Path, command: list[str], *, staged: bool | None = None) -> Controller:
    settings = make_settings(state_dir, models=[{"name": "m", "command": command, "startup_grace_seconds": 0.3}],
                             unload_timeout_seconds=3)
    if staged is None:
        return build_controller(settings)
    return Controller(settings, make_source(settings), Store(settings.state_dir / "gpuwarden.db"),
                      LocalProcessHost(settings.state_dir / "logs", staged_stop=staged))


def registered(fake_smi: FakeSmi) -> list[int]:
    return [pid for pid in fake_smi.registered_pids() if psutil.pid_exists(pid)]


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.Error:
        return True


def leftovers_of(log_path: Path) -> list[str]:
    return sorted(p.name for p in log_path.parent.iterdir() if p.name.endswith((".tmp", ".stop.json")))


# ------------------------------------------------------------------ pure, everywhere


def test_job_names_are_a_digest_of_the_load_in_both_namespaces(tmp_path: Path) -> None:
    exit_path = tmp_path / "llama-20261127-0123456789abcdef.exit.json"
    global_name, local_name = jobs.job_names(exit_path)
    assert global_name == "Global\\" + local_name and local_name.startswith("gpuwarden-job-")
    assert "llama" not in local_name and len(local_name) == len("gpuwarden-job-") + 32
    assert jobs.job_names(exit_path) == (global_name, local_name)
    assert jobs.job_names(exit_path.with_name("other.exit.json"))[1] != local_name


@pytest.mark.parametrize(("standing", "flags", "note"), [
    (jobs.JobStanding(in_job=False), 0, None),
    (jobs.JobStanding(in_job=True, breakaway_ok=True), jobs.CREATE_BREAKAWAY_FROM_JOB, None),
    (jobs.JobStanding(in_job=True, breakaway_ok=True, silent_breakaway=True), 0, None),
    (jobs.JobStanding(in_job=True), jobs.CREATE_BREAKAWAY_FROM_JOB, "models stop if the wrapper terminates that job"),
    (jobs.JobStanding(in_job=True, kill_on_close=True), jobs.CREATE_BREAKAWAY_FROM_JOB,
     "models stop whenever gpuwarden stops"),
])
def test_a_launcher_leaves_gpuwardens_job_only_where_it_may(standing: jobs.JobStanding, flags: int,
                                                            note: str | None) -> None:
    assert standing.launch_flags == flags
    said = standing.note()
    assert (said is None) == (note is None)
    if note is not None:
        assert said is not None and note in said and "breakaway" in said


# ------------------------------------------------------------------ the stop request, everywhere


def test_a_model_that_ignores_the_stop_request_is_forced_after_its_grace(fake_smi: FakeSmi, tmp_path: Path) -> None:
    """The staged (Windows) order run here: the launcher asks, waits the grace period, forces, and
    still writes its exit record; nothing of the request is left behind."""
    controller = controller_for(tmp_path / "state", model_command("--ignore-term"), staged=True)
    controller.load("m", parse_selection("0"))
    assert wait_for(lambda: registered(fake_smi))
    started = time.monotonic()
    view = controller.unload("m")
    elapsed_seconds = time.monotonic() - started
    assert view.state == "stopped" and not registered(fake_smi)
    assert view.exit_code is not None and view.exit_code != 0
    log = Path(str(view.log_path))
    said = log.read_text(encoding="utf-8")
    assert "stop requested (forced after 3 s)" in said
    if UNDER_WINE:  # Wine cannot send a console Ctrl+Break: the launcher says so and forces at once
        assert "cannot ask the model to stop" in said and elapsed_seconds < 12
    else:
        assert 2.5 <= elapsed_seconds < 12, elapsed_seconds  # the 3 s grace, then forced
    assert leftovers_of(log) == []


def test_a_model_asked_to_stop_ends_by_itself(fake_smi: FakeSmi, tmp_path: Path) -> None:
    """The graceful half: SIGTERM on POSIX, Ctrl+Break to its process group on Windows (the fake
    model exits 3 on it). Wine cannot deliver a console Ctrl+Break, which the launcher reports."""
    controller = controller_for(tmp_path / "state", model_command(), staged=True)
    controller.load("m", parse_selection("0"))
    assert wait_for(lambda: registered(fake_smi))
    view = controller.unload("m")
    said = Path(str(view.log_path)).read_text(encoding="utf-8")
    if UNDER_WINE:
        assert "cannot ask the model to stop" in said
    elif sys.platform == "win32":
        assert view.exit_code == 3 and "fake model got Ctrl+Break" in said
    else:
        assert view.exit_code == -15  # SIGTERM, not SIGKILL


@pytest.mark.skipif(sys.platform == "win32", reason="the POSIX semantics: the load ends with its direct child")
def test_posix_a_handed_off_model_ends_the_load_and_its_orphan_is_stopped(fake_smi: FakeSmi, tmp_path: Path) -> None:
    controller = controller_for(tmp_path / "state", model_command("--handoff"))
    controller.load("m", parse_selection("0"))
    assert wait_for(lambda: registered(fake_smi))
    orphan = registered(fake_smi)[0]
    assert wait_for(lambda: (controller.reconcile(), controller.models()[0].state)[1] == "stopped", 10)
    assert wait_for(lambda: gone(orphan), 5)


# ------------------------------------------------------------------ job objects, Windows


@windows_only
def test_the_load_lasts_while_its_job_runs_and_unload_stops_the_orphan(fake_smi: FakeSmi, tmp_path: Path) -> None:
    """`cmd /c start server.exe`-style: the model's own process exits at once and its child holds the
    GPU. The child stays the model's (not "someone else"), and unload stops it, parentless as it is."""
    controller = controller_for(tmp_path / "state", model_command("--handoff"))
    controller.load("m", parse_selection("0"))
    assert wait_for(lambda: registered(fake_smi), 30)
    orphan = registered(fake_smi)[0]
    assert wait_for(lambda: controller.models()[0].model_pid is None, 10)  # its parent has exited
    controller.reconcile()
    view = controller.models()[0]
    assert view.state in ("starting", "running") and view.pid is not None
    gpu = controller.status(Freshness.NOW).gpu(0)
    assert gpu is not None and gpu.state is GpuState.MODEL_LOADED, gpu
    stopped = controller.unload("m")
    assert stopped.state == "stopped" and wait_for(lambda: gone(orphan), 5)
    assert stopped.exit_code == 0  # the model's own process ended by itself, with 0
    log = Path(str(stopped.log_path))
    assert "still run; the load ends when they do" in log.read_text(encoding="utf-8")
    assert leftovers_of(log) == []
    assert jobs.open_job(exit_path_for(log)) is None or jobs.open_job(exit_path_for(log)).pids() == frozenset()  # type: ignore[union-attr]


@windows_only
def test_a_killed_launcher_leaves_the_job_findable_and_nothing_untracked(fake_smi: FakeSmi, tmp_path: Path) -> None:
    """The model holds a handle to its job, so its name outlives a launcher killed from Task Manager:
    supervision finds the model and its grandchild through the job and stops both."""
    controller = controller_for(tmp_path / "state", model_command("--child"))
    controller.load("m", parse_selection("0"))
    assert wait_for(lambda: len(registered(fake_smi)) == 2, 30)
    running = registered(fake_smi)
    view = controller.models()[0]
    psutil.Process(view.pid).kill()  # the launcher
    job = jobs.open_job(exit_path_for(Path(str(view.log_path))))
    assert job is not None and set(running) <= job.pids()
    job.close()
    assert wait_for(lambda: (controller.reconcile(), controller.models()[0].state)[1] == "failed", 20)
    assert wait_for(lambda: all(gone(pid) for pid in running), 10)


@windows_only
def test_a_squatted_job_name_is_never_used(fake_smi: FakeSmi, tmp_path: Path) -> None:
    """Someone who created the job's name first gets nothing: the model runs without a job, and an
    unload still stops it."""
    controller = controller_for(tmp_path / "state", model_command())
    log_path = controller.processes.new_log_path("m")
    squatter = jobs.create_job(exit_path_for(log_path))  # type: ignore[arg-type]
    try:
        controller.processes.new_log_path = lambda name: log_path  # type: ignore[method-assign]
        controller.load("m", parse_selection("0"))
        assert wait_for(lambda: registered(fake_smi), 30)
        assert squatter.pids() == frozenset()
        assert "runs without a job object" in log_path.read_text(encoding="utf-8")
        assert controller.unload("m").state == "stopped" and wait_for(lambda: not registered(fake_smi), 5)
    finally:
        squatter.close()


@windows_only
def test_own_standing_reads_the_job_gpuwarden_runs_in(tmp_path: Path) -> None:
    """A Python put in a job that allows no breakaway reads that about itself, and has a note for it."""
    job = jobs.create_job(tmp_path / "wrapper.exit.json")
    try:
        code = "from gpuwarden.process import jobs; s = jobs.own_standing(); print(s.in_job, s.note() is not None)"
        child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                                 creationflags=jobs.CREATE_SUSPENDED)
        job.adopt(int(child._handle))  # type: ignore[attr-defined]
        output, _ = child.communicate(timeout=60)
        assert output.decode().split() == ["True", "True"]
    finally:
        job.close()


LAUNCH_FROM_A_WRAPPER = """
import json, os, sys
from pathlib import Path
from gpuwarden.process.host import LocalProcessHost
host = LocalProcessHost(Path(sys.argv[1]))
log = host.new_log_path("m")
launched = host.launch(model_name="m", argv=json.loads(sys.argv[2]), env={**os.environ, "CUDA_VISIBLE_DEVICES": "0"},
                       cwd=Path.cwd(), log_path=log)
print(json.dumps([launched.pid, launched.start_time, str(log)]), flush=True)
"""


def _wrapper_job(tmp_path: Path, *, breakaway_ok: bool) -> jobs.Job:
    """A job like a service wrapper's (WinSW, NSSM): kill-on-close, breakaway allowed or not."""
    import ctypes

    job = jobs.create_job(tmp_path / f"wrapper-{breakaway_ok}.exit.json")
    limits = jobs._ExtendedLimits()
    breakaway = jobs.JOB_OBJECT_LIMIT_BREAKAWAY_OK if breakaway_ok else 0
    limits.basic.flags = jobs.JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE | breakaway
    kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
    handle = ctypes.c_void_p(job._handle)
    assert kernel32.SetInformationJobObject(handle, jobs.EXTENDED_LIMIT_INFORMATION, ctypes.byref(limits),
                                            ctypes.sizeof(limits)), ctypes.get_last_error()
    return job


@windows_only
@pytest.mark.parametrize("breakaway_ok", [True, False])
def test_models_outlive_a_wrapper_job_only_where_it_allows_breakaway(fake_smi: FakeSmi, tmp_path: Path,
                                                                     breakaway_ok: bool) -> None:
    """gpuwarden run by a service wrapper whose job dies with it (kill-on-close): where the job allows
    breakaway the model leaves it and survives the wrapper; where not, it stops with it (the README's
    Windows notes say so, and `serve` warns)."""
    import json

    wrapper = _wrapper_job(tmp_path, breakaway_ok=breakaway_ok)
    gpuwarden = subprocess.Popen([sys.executable, "-c", LAUNCH_FROM_A_WRAPPER, str(tmp_path / "logs"),
                                  json.dumps(model_command())], stdout=subprocess.PIPE,
                                 creationflags=jobs.CREATE_SUSPENDED)
    wrapper.adopt(int(gpuwarden._handle))  # type: ignore[attr-defined]
    output, _ = gpuwarden.communicate(timeout=60)
    pid, start_time, log = json.loads(output)
    assert wait_for(lambda: registered(fake_smi), 30)
    model = registered(fake_smi)[0]
    wrapper.close()  # the wrapper ends: its job kills what is still in it
    host = LocalProcessHost(tmp_path / "logs")
    if breakaway_ok:
        time.sleep(1)
        assert host.alive(pid, start_time) and not gone(model)
        host.stop(pid, start_time, 3, log_path=Path(log))
    assert wait_for(lambda: gone(model) and not host.alive(pid, start_time), 10)


def test_serve_warns_when_models_cannot_leave_its_job(tmp_path: Path) -> None:
    from gpuwarden.web.server import start_notes

    settings = make_settings(tmp_path / "state")
    trapped = start_notes(settings, jobs.JobStanding(in_job=True, kill_on_close=True))
    assert any("does not allow breakaway" in note for note in trapped)
    free = start_notes(settings, jobs.JobStanding(in_job=True, breakaway_ok=True))
    assert not any("breakaway" in note for note in free) and len(free) == len(trapped) - 1
