"""The interface between the controller and the operating system's processes.

A process is named by its PID *and* its start time everywhere: a PID the OS reused for another
program is never mistaken for a model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from gpuwarden.process.exitrecord import ExitRecord


class LaunchError(Exception):
    """The model's command could not be started; nothing was left running."""


@dataclass(frozen=True)
class Launched:
    """A model process that was started: its launcher's PID and start time (its files follow from
    the log path the caller chose)."""

    pid: int
    start_time: float


class ProcessHost(Protocol):
    """Launch, watch and stop model process trees. Never raises for a process that is gone."""

    def new_log_path(self, model_name: str) -> Path:
        """A fresh, unique log file for one load (decided before the launch, and recorded with it)."""
        ...

    def launch(self, *, model_name: str, argv: Sequence[str], env: Mapping[str, str], cwd: Path,
               log_path: Path) -> Launched:
        """Start ``argv`` detached, under the launcher, logging to ``log_path``. Raises LaunchError."""
        ...

    def find_launcher(self, log_path: Path) -> tuple[int, float] | None:
        """The PID and start time of the launcher running for ``log_path``, if one runs: how a load
        whose process was never recorded (gpuwarden killed mid-load) is found again."""
        ...

    def model_process(self, log_path: Path | None) -> tuple[int, float] | None:
        """The model's own process (the launcher's child), while it runs: its PID and start time."""
        ...

    def leftovers(self, launcher: tuple[int, float] | None, log_path: Path | None) -> list[tuple[int, float]]:
        """What still runs of a load whose launcher is gone or unknown: the recorded model process,
        (POSIX) every process of the launcher's process group started after the launcher, and
        (Windows) every process in the load's job object. So a model behind a wrapper (``sh -c``,
        ``conda run``, ``cmd /c``) is found too."""
        ...

    def alive(self, pid: int, start_time: float | None) -> bool:
        """The same process (PID and start time) still runs and is not a zombie."""
        ...

    def tree(self, pid: int, start_time: float | None, *, log_path: Path | None = None) -> frozenset[int]:
        """The PIDs of a model: its launcher and every descendant, and (Windows) everything in the job
        of the load whose log is ``log_path``, whose parent may be gone (empty if it is all gone)."""
        ...

    def stop(self, pid: int, start_time: float | None, timeout_seconds: float, *,
             log_path: Path | None = None) -> None:
        """Stop the whole tree: ask first, kill what is left after ``timeout_seconds``. ``log_path``
        names the load a launcher runs, so that (Windows) its launcher stops all of its job."""
        ...

    def healthy(self, url: str) -> bool:
        """An HTTP health check: True for any 2xx answer."""
        ...

    def exit_record(self, log_path: Path | None) -> ExitRecord | None:
        """How the model whose log is ``log_path`` ended, as its launcher recorded it (None: not yet)."""
        ...

    def log_tail(self, log_path: Path | None) -> str | None:
        """The last lines of a model's log."""
        ...

    def free_port(self) -> int:
        """A TCP port free on this machine now (the ``{port}`` placeholder)."""
        ...

    def reap(self) -> None:
        """Collect children of this process that ended (no zombies left behind)."""
        ...
