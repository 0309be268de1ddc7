"""The real :class:`~gpuwarden.process.base.ProcessHost`: start, watch and stop model process trees,
portably (psutil; no POSIX-only calls on Windows paths).

A model runs under :mod:`gpuwarden.process.shim`, started detached (its own session / process group) so
it outlives the gpuwarden process that started it. A process is identified by PID *and* start
time, so a PID the OS reused for another program is never mistaken for a model.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path

import psutil

from gpuwarden.executables import find_on_path
from gpuwarden.process import jobs
from gpuwarden.process.base import Launched, LaunchError
from gpuwarden.process.exitrecord import (
    ExitRecord,
    exit_path_for,
    model_path_for,
    read_exit_record,
    read_model_record,
    stop_path_for,
    write_stop_request,
)

START_TIME_TOLERANCE_SECONDS = 0.5
LAUNCHER_EXIT_GRACE_SECONDS = 3.0  # Windows: a launcher writes its exit record this long after its model
FORCED_STOP_WAIT_SECONDS = 1.0
STOP_REQUEST_GRACE_SECONDS = 15.0  # a launcher forces its model at the grace's end; freeing GPU memory takes time
LOG_TAIL_LINES = 20
LOG_TAIL_BYTES = 16 * 1024


def resolve_program(program: str, cwd: Path, path_env: str | None) -> str | None:
    """The executable a command's first word names, or None if it does not exist."""
    candidate = Path(program)
    if candidate.is_absolute() or os.sep in program or (os.altsep and os.altsep in program):
        full = candidate if candidate.is_absolute() else cwd / candidate
        return str(full) if full.is_file() else None
    found = find_on_path(program, path_env)
    return str(found) if found is not None else None


def process_start_time(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except (psutil.Error, OSError, ValueError):
        return None


def _terminate(processes: list[psutil.Process], timeout_seconds: float) -> None:
    """Ask every process to stop, then kill those still there after ``timeout_seconds``."""
    for process in processes:
        with contextlib.suppress(psutil.Error, OSError):
            process.terminate()
    _gone, alive = psutil.wait_procs(processes, timeout=timeout_seconds)
    for process in alive:
        with contextlib.suppress(psutil.Error, OSError):
            process.kill()
    psutil.wait_procs(alive, timeout=5)


def _group_members(leader_pid: int, leader_start: float) -> dict[int, float]:
    """POSIX: the processes of the process group the launcher led (it starts its own session), that
    started after it: a PID reused by another program cannot be in that group while members live."""
    members: dict[int, float] = {}
    if sys.platform == "win32":  # no process groups: a job object will hold the tree (see the README)
        return members
    else:  # a platform branch, not a bare return: mypy checks each platform on its own
        for process in psutil.process_iter(["create_time"]):
            with contextlib.suppress(psutil.Error, OSError, TypeError, ValueError):
                start = float(process.info["create_time"])
                if os.getpgid(process.pid) == leader_pid and start >= leader_start - START_TIME_TOLERANCE_SECONDS:
                    members[process.pid] = start
        return members


def _may_stop(pid: int) -> bool:
    """Never init, gpuwarden itself or its parent, whatever a record says. (psutil for the parent:
    os.getppid() needs an API Wine lacks on Windows builds.)"""
    if pid <= 1 or pid == os.getpid():
        return False
    try:
        return pid != psutil.Process().ppid()
    except (psutil.Error, OSError):
        return False


def _detach_options(breakaway_flags: int) -> dict[str, object]:
    """Start a model in its own session / process group, with no console window on Windows, so it
    outlives the gpuwarden process (or terminal) that started it; on Windows it also leaves the job
    gpuwarden runs in, where that job allows it (``breakaway_flags``)."""
    if sys.platform == "win32":
        return {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP | subprocess.CREATE_NO_WINDOW | breakaway_flags}
    else:  # a platform branch, not a bare return: mypy checks each platform on its own
        return {"start_new_session": True}


def job_members(log_path: Path | None) -> frozenset[int]:
    """Windows: the processes in the job of the load whose log is ``log_path`` (its launcher keeps the
    job open while any run). Empty elsewhere (no job objects there), or where the job is gone."""
    job = jobs.open_job(exit_path_for(log_path))
    if job is None:
        return frozenset()
    try:
        return job.pids()
    finally:
        job.close()


def terminate_job(log_path: Path | None) -> None:
    """Windows: end every process in the load's job at once (also those whose parent has exited)."""
    job = jobs.open_job(exit_path_for(log_path))
    if job is not None:
        job.terminate()
        job.close()


class LocalProcessHost:
    """The processes of this machine. Keeps the Popen of each child it started so the OS can reap it."""

    def __init__(self, logs_dir: Path, *, staged_stop: bool = sys.platform == "win32") -> None:
        self._logs_dir = logs_dir
        self._staged_stop = staged_stop
        self._children: dict[int, subprocess.Popen[bytes]] = {}
        self._breakaway_flags: int | None = None

    def new_log_path(self, model_name: str) -> Path:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        return self._logs_dir / f"{model_name}-{stamp}-{uuid.uuid4().hex[:16]}.log"

    def launch(self, *, model_name: str, argv: Sequence[str], env: Mapping[str, str], cwd: Path,
               log_path: Path) -> Launched:
        program = resolve_program(argv[0], cwd, env.get("PATH"))
        if program is None:
            raise LaunchError(f"model {model_name}: command not found: {argv[0]!r}")
        if not cwd.is_dir():
            raise LaunchError(f"model {model_name}: working directory {cwd} does not exist")
        log_path.parent.mkdir(parents=True, exist_ok=True)
        exit_path = exit_path_for(log_path)
        assert exit_path is not None
        shim = [sys.executable, "-m", "gpuwarden.process.shim", str(exit_path), "--", program, *argv[1:]]
        try:
            child = self._spawn(shim, log_path, env, cwd)
        except OSError as error:
            raise LaunchError(f"model {model_name}: cannot start: {error.strerror or error}") from None
        self._children[child.pid] = child
        start_time = process_start_time(child.pid)
        if start_time is None:
            child.poll()
            raise LaunchError(f"model {model_name}: its process ended at once; see {log_path}")
        return Launched(pid=child.pid, start_time=start_time)

    def _spawn(self, shim: list[str], log_path: Path, env: Mapping[str, str], cwd: Path) -> subprocess.Popen[bytes]:
        """Start the launcher, out of gpuwarden's own job where that job lets it (Windows): asking to
        leave a job that does not allow it fails, so that is asked once and then no more."""
        if self._breakaway_flags is None:
            self._breakaway_flags = jobs.own_standing().launch_flags
        with log_path.open("ab") as log:
            def start(flags: int) -> subprocess.Popen[bytes]:
                child: subprocess.Popen[bytes] = subprocess.Popen(
                    shim, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=dict(env),
                    cwd=str(cwd), **_detach_options(flags))  # type: ignore[call-overload]
                return child

            try:
                return start(self._breakaway_flags)
            except PermissionError:
                if not self._breakaway_flags:
                    raise
            child = start(0)  # denied for the breakaway alone only if this start succeeds
            self._breakaway_flags = 0
            print("gpuwarden: the job object gpuwarden runs in does not let models leave it: they stop when"
                  " that job is ended (see the README's Windows notes)", file=sys.stderr, flush=True)
            return child

    def find_launcher(self, log_path: Path) -> tuple[int, float] | None:
        """The launcher's command line is ``python -m gpuwarden.process.shim <its exit record> -- ...``,
        and the exit record's path is unique to one load."""
        wanted = ["-m", "gpuwarden.process.shim", str(exit_path_for(log_path)), "--"]
        for process in psutil.process_iter(["cmdline", "create_time"]):
            with contextlib.suppress(psutil.Error, OSError, TypeError, ValueError):
                if (process.info["cmdline"] or [])[1:5] == wanted:
                    return process.pid, float(process.info["create_time"])
        return None

    def model_process(self, log_path: Path | None) -> tuple[int, float] | None:
        recorded = read_model_record(model_path_for(log_path))
        if recorded is None or not self.alive(*recorded):
            return None
        return recorded

    def leftovers(self, launcher: tuple[int, float] | None, log_path: Path | None) -> list[tuple[int, float]]:
        found: dict[int, float] = {}
        model = self.model_process(log_path) if log_path is not None else None
        if model is not None:
            found[model[0]] = model[1]
        if launcher is not None:
            found.update(_group_members(*launcher))
        for pid in job_members(log_path):
            start = process_start_time(pid)
            if start is not None:
                found[pid] = start
        return [(pid, start) for pid, start in found.items() if _may_stop(pid)]

    def alive(self, pid: int, start_time: float | None) -> bool:
        try:
            process = psutil.Process(pid)
            if start_time is not None and abs(process.create_time() - start_time) > START_TIME_TOLERANCE_SECONDS:
                return False
            return process.status() != psutil.STATUS_ZOMBIE
        except (psutil.Error, OSError, ValueError):
            return False

    def tree(self, pid: int, start_time: float | None, *, log_path: Path | None = None) -> frozenset[int]:
        members = job_members(log_path)
        if not self.alive(pid, start_time):
            return members
        try:
            root = psutil.Process(pid)
            return members | frozenset([pid, *(child.pid for child in root.children(recursive=True))])
        except (psutil.Error, OSError):
            return members

    def stop(self, pid: int, start_time: float | None, timeout_seconds: float, *,
             log_path: Path | None = None) -> None:
        """Graceful first, forced after ``timeout_seconds``: SIGTERM to the tree, then SIGKILL. On
        Windows (staged) the launcher is asked to stop its model (Ctrl+Break, then the job terminated)
        and exits by itself once it has written its exit record; only a launcher that does not is forced."""
        if not self.alive(pid, start_time):
            return
        try:
            root = psutil.Process(pid)
            children = root.children(recursive=True)
        except (psutil.Error, OSError):
            return
        if not self._staged_stop:
            _terminate([*children, root], timeout_seconds)
            return
        if self._launcher_stopped(root, log_path, timeout_seconds):
            return
        terminate_job(log_path)
        _terminate(children, FORCED_STOP_WAIT_SECONDS if log_path else timeout_seconds)
        try:
            root.wait(timeout=LAUNCHER_EXIT_GRACE_SECONDS)
        except (psutil.Error, OSError):
            _terminate([root], FORCED_STOP_WAIT_SECONDS)
            exit_path = exit_path_for(log_path)
            if exit_path is not None:  # killed while writing its record, perhaps
                with contextlib.suppress(OSError):
                    exit_path.with_name(exit_path.name + ".tmp").unlink(missing_ok=True)

    def _launcher_stopped(self, root: psutil.Process, log_path: Path | None, timeout_seconds: float) -> bool:
        """Ask the launcher to stop its model, and wait for it to end: did it? It forces the model
        after ``timeout_seconds``; a model that holds many GiB may take a while more to be gone."""
        stop_path = stop_path_for(log_path)
        if stop_path is None:
            return False
        try:
            write_stop_request(stop_path, timeout_seconds)
            root.wait(timeout=timeout_seconds + STOP_REQUEST_GRACE_SECONDS)
            return True
        except (psutil.Error, OSError):
            return False
        finally:
            with contextlib.suppress(OSError):
                stop_path.unlink(missing_ok=True)

    def healthy(self, url: str, timeout_seconds: float = 2.0) -> bool:
        if not url.startswith(("http://", "https://")):
            return False
        import urllib.request  # here: http.client and ssl cost every CLI start tens of milliseconds

        try:
            with urllib.request.urlopen(url, timeout=timeout_seconds) as response:  # noqa: S310 (config URL)
                return 200 <= int(response.status) < 300
        except (OSError, ValueError):  # URLError is an OSError
            return False

    def exit_record(self, log_path: Path | None) -> ExitRecord | None:
        return read_exit_record(exit_path_for(log_path))

    def log_tail(self, log_path: Path | None, lines: int = LOG_TAIL_LINES) -> str | None:
        """A bounded read of the log's end."""
        if log_path is None:
            return None
        try:
            with log_path.open("rb") as handle:
                handle.seek(0, os.SEEK_END)
                size = handle.tell()
                handle.seek(max(0, size - LOG_TAIL_BYTES))
                data = handle.read()
        except OSError:
            return None
        text = data.decode("utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def free_port(self) -> int:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind(("127.0.0.1", 0))
            return int(probe.getsockname()[1])

    def reap(self) -> None:
        for pid, child in list(self._children.items()):
            if child.poll() is not None:
                del self._children[pid]
