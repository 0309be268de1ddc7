"""An in-memory :class:`~gpuwarden.process.base.ProcessHost` for tests, shipped beside the real one
(as httpx ships ``MockTransport``). Nothing is started: each launch is a record, and the test
decides how it goes on: it passes its health check, exits with a code, vanishes without a trace,
ignores a stop, or has its PID taken by another program.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from gpuwarden.process.base import Launched, LaunchError
from gpuwarden.process.exitrecord import ExitRecord

FAKE_START_TIME_BASE = 1_000_000.0


@dataclass
class FakeProcess:
    """One launched model: what it was given and how it is doing."""

    pid: int
    start_time: float
    model_name: str
    argv: tuple[str, ...]
    env: dict[str, str]
    cwd: Path
    log_path: Path
    model_pid: int = 0  # the model's own process, the launcher's child
    children: set[int] = field(default_factory=set)  # further processes the model started
    running: bool = True
    model_running: bool = True
    ignores_stop: bool = False
    log_lines: list[str] = field(default_factory=list)


class FakeProcessHost:
    """Processes as plain records. Every method is fast and deterministic."""

    def __init__(self, logs_dir: Path = Path("fake-logs"), *, first_pid: int = 4000,
                 stop_exit_code: int = 0) -> None:
        self.logs_dir = logs_dir
        self.processes: dict[int, FakeProcess] = {}
        self.healthy_urls: set[str] = set()
        self.launch_error: str | None = None  # the next launches fail with this message
        self.stop_exit_code = stop_exit_code  # what the launcher records for a model that was stopped
        self.stops: list[int] = []
        self.stopped_loads: list[Path | None] = []  # the log_path each stop named (None: a lone process)
        self.reaps = 0
        self._exit_records: dict[Path, ExitRecord] = {}
        self._pids = itertools.count(first_pid)
        self._ports = itertools.count(20000)
        self._logs = itertools.count(1)

    # ---------------------------------------------------------------- what a test does

    def process(self, model_name: str) -> FakeProcess:
        """The newest process launched for ``model_name``."""
        return [p for p in self.processes.values() if p.model_name == model_name][-1]

    def spawn_child(self, pid: int) -> int:
        """The model starts a child process (a worker); returns its PID."""
        child = next(self._pids)
        self.processes[pid].children.add(child)
        return child

    def exit(self, pid: int, exit_code: int, error: str | None = None) -> None:
        """The model ends by itself; its launcher records the exit code."""
        process = self.processes[pid]
        process.running = process.model_running = False
        self._exit_records[process.log_path] = ExitRecord(exit_code=exit_code, error=error)

    def vanish(self, pid: int) -> None:
        """The model and its launcher are killed together: no exit record."""
        process = self.processes[pid]
        process.running = process.model_running = False

    def kill_launcher(self, pid: int) -> None:
        """Only the launcher is killed: its model runs on (as where no parent-death signal exists)."""
        self.processes[pid].running = False

    def reuse_pid(self, pid: int) -> None:
        """The model is gone and the OS gave its PID to an unrelated program (another start time)."""
        process = self.processes[pid]
        process.model_running = False
        process.running = True
        process.start_time += 3600.0
        process.children.clear()

    def log(self, pid: int, *lines: str) -> None:
        self.processes[pid].log_lines.extend(lines)

    # ---------------------------------------------------------------- ProcessHost

    def new_log_path(self, model_name: str) -> Path:
        return self.logs_dir / f"{model_name}-{next(self._logs)}.log"

    def launch(self, *, model_name: str, argv: Sequence[str], env: Mapping[str, str], cwd: Path,
               log_path: Path) -> Launched:
        if self.launch_error is not None:
            raise LaunchError(f"model {model_name}: {self.launch_error}")
        pid, model_pid = next(self._pids), next(self._pids)
        self.processes[pid] = FakeProcess(pid=pid, start_time=FAKE_START_TIME_BASE + pid, model_name=model_name,
                                          argv=tuple(argv), env=dict(env), cwd=cwd, log_path=log_path,
                                          model_pid=model_pid)
        return Launched(pid=pid, start_time=FAKE_START_TIME_BASE + pid)

    def find_launcher(self, log_path: Path) -> tuple[int, float] | None:
        for process in self.processes.values():
            if process.log_path == log_path and process.running:
                return process.pid, process.start_time
        return None

    def leftovers(self, launcher: tuple[int, float] | None, log_path: Path | None) -> list[tuple[int, float]]:
        model = self.model_process(log_path)
        return [model] if model is not None else []

    def model_process(self, log_path: Path | None) -> tuple[int, float] | None:
        for process in self.processes.values():
            if process.log_path == log_path and process.model_running:
                return process.model_pid, FAKE_START_TIME_BASE + process.model_pid
        return None

    def _owner_of_model(self, pid: int) -> FakeProcess | None:
        return next((p for p in self.processes.values() if p.model_pid == pid and p.model_running), None)

    def alive(self, pid: int, start_time: float | None) -> bool:
        owner = self._owner_of_model(pid)
        if owner is not None:
            return start_time is None or start_time == FAKE_START_TIME_BASE + pid
        process = self.processes.get(pid)
        if process is None or not process.running:
            return False
        return start_time is None or process.start_time == start_time

    def tree(self, pid: int, start_time: float | None, *, log_path: Path | None = None) -> frozenset[int]:
        if not self.alive(pid, start_time):
            return frozenset()
        process = self._owner_of_model(pid) or self.processes[pid]
        model = {process.model_pid} if process.model_running else set()
        return frozenset({pid, *model, *process.children})

    def stop(self, pid: int, start_time: float | None, timeout_seconds: float, *,
             log_path: Path | None = None) -> None:
        self.stops.append(pid)
        self.stopped_loads.append(log_path)
        if not self.alive(pid, start_time):
            return
        owner = self._owner_of_model(pid)
        if owner is not None and not owner.running:  # a model whose launcher is gone: no one records it
            owner.model_running = False
            return
        process = owner or self.processes[pid]
        if not process.ignores_stop:
            self.exit(process.pid, self.stop_exit_code)
        else:  # killed after the timeout, with its launcher: no record
            self.vanish(process.pid)

    def healthy(self, url: str) -> bool:
        return url in self.healthy_urls

    def exit_record(self, log_path: Path | None) -> ExitRecord | None:
        return self._exit_records.get(log_path) if log_path is not None else None

    def log_tail(self, log_path: Path | None) -> str | None:
        for process in self.processes.values():
            if process.log_path == log_path:
                return "\n".join(process.log_lines[-20:])
        return None

    def free_port(self) -> int:
        return next(self._ports)

    def reap(self) -> None:
        self.reaps += 1
