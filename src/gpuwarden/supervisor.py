"""Start, watch and stop model process trees, portably (psutil; no POSIX-only calls on Windows paths).

A model runs under :mod:`gpuwarden.shim`, started detached (its own session / process group) so
it outlives the gpuwarden process that started it. A process is identified by PID *and* start
time, so a PID the OS reused for another program is never mistaken for a model.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

START_TIME_TOLERANCE_SECONDS = 0.5
LOG_TAIL_LINES = 20
LOG_TAIL_BYTES = 16 * 1024
EXIT_SUFFIX = ".exit.json"  # beside each model's log: the shim's record of how it ended


class LaunchError(Exception):
    """The model's command could not be started; nothing was left running."""


@dataclass(frozen=True)
class Launched:
    pid: int
    start_time: float
    log_path: Path
    exit_path: Path


@dataclass(frozen=True)
class ExitRecord:
    exit_code: int | None
    error: str | None


def free_port() -> int:
    """A TCP port free on this machine right now (for the ``{port}`` placeholder)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def resolve_program(program: str, cwd: Path, path_env: str | None) -> str | None:
    """The executable a command's first word names, or None if it does not exist."""
    candidate = Path(program)
    if candidate.is_absolute() or os.sep in program or (os.altsep and os.altsep in program):
        full = candidate if candidate.is_absolute() else cwd / candidate
        return str(full) if full.is_file() else None
    return shutil.which(program, path=path_env)


def process_start_time(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except (psutil.Error, OSError, ValueError):
        return None


def is_alive(pid: int, start_time: float | None) -> bool:
    """The same process (PID and start time) still runs and is not a zombie."""
    try:
        process = psutil.Process(pid)
        if start_time is not None and abs(process.create_time() - start_time) > START_TIME_TOLERANCE_SECONDS:
            return False
        return process.status() != psutil.STATUS_ZOMBIE
    except (psutil.Error, OSError, ValueError):
        return False


def process_tree(pid: int, start_time: float | None) -> frozenset[int]:
    """The PIDs of a model: its launcher and every descendant (empty if it is gone)."""
    if not is_alive(pid, start_time):
        return frozenset()
    try:
        root = psutil.Process(pid)
        return frozenset([pid, *(child.pid for child in root.children(recursive=True))])
    except (psutil.Error, OSError):
        return frozenset()


def stop_tree(pid: int, start_time: float | None, timeout_seconds: float) -> None:
    """Stop the whole tree: graceful first (SIGTERM; on Windows TerminateProcess is all there
    is for a detached console-less process), forced (kill) after ``timeout_seconds``."""
    if not is_alive(pid, start_time):
        return
    try:
        root = psutil.Process(pid)
        members = [*root.children(recursive=True), root]
    except (psutil.Error, OSError):
        return
    for member in members:
        with contextlib.suppress(psutil.Error, OSError):
            member.terminate()
    _gone, alive = psutil.wait_procs(members, timeout=timeout_seconds)
    for member in alive:
        with contextlib.suppress(psutil.Error, OSError):
            member.kill()
    psutil.wait_procs(alive, timeout=5)


def exit_path_for(log_path: Path | None) -> Path | None:
    """Where the shim records how the model whose log is ``log_path`` ended."""
    return log_path.with_suffix(EXIT_SUFFIX) if log_path is not None else None


def read_exit_file(path: Path | None) -> ExitRecord | None:
    """The shim's record of how the model ended; the file is untrusted."""
    if path is None:
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    code = data.get("exit_code")
    error = data.get("error")
    return ExitRecord(exit_code=code if isinstance(code, int) else None,
                      error=error[:1000] if isinstance(error, str) else None)


def log_tail(path: Path | None, lines: int = LOG_TAIL_LINES) -> str | None:
    """The last lines of a model's log (bounded read)."""
    if path is None:
        return None
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - LOG_TAIL_BYTES))
            data = handle.read()
    except OSError:
        return None
    text = data.decode("utf-8", errors="replace")
    return "\n".join(text.splitlines()[-lines:])


def health_ok(url: str, timeout_seconds: float = 2.0) -> bool:
    """An HTTP health check: any 2xx answer."""
    if not url.startswith(("http://", "https://")):
        return False
    try:
        with urllib.request.urlopen(url, timeout=timeout_seconds) as response:  # noqa: S310 (config URL)
            return 200 <= int(response.status) < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False


class Supervisor:
    """Launches models. Keeps the Popen of each child it started so the OS can reap it."""

    def __init__(self, logs_dir: Path) -> None:
        self._logs_dir = logs_dir
        self._children: dict[int, subprocess.Popen[bytes]] = {}

    def launch(self, *, model_name: str, argv: Sequence[str], env: Mapping[str, str], cwd: Path) -> Launched:
        program = resolve_program(argv[0], cwd, env.get("PATH"))
        if program is None:
            raise LaunchError(f"model {model_name}: command not found: {argv[0]!r}")
        if not cwd.is_dir():
            raise LaunchError(f"model {model_name}: working directory {cwd} does not exist")
        self._logs_dir.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        log_path = self._logs_dir / f"{model_name}-{stamp}-{os.getpid()}-{time.monotonic_ns()}.log"
        exit_path = log_path.with_suffix(EXIT_SUFFIX)
        shim = [sys.executable, "-m", "gpuwarden.shim", str(exit_path), "--", program, *argv[1:]]
        kwargs: dict[str, object] = {}
        if sys.platform == "win32":
            kwargs["creationflags"] = (subprocess.CREATE_NEW_PROCESS_GROUP
                                       | getattr(subprocess, "CREATE_NO_WINDOW", 0))
        else:
            kwargs["start_new_session"] = True
        try:
            with log_path.open("ab") as log:
                child = subprocess.Popen(shim, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         env=dict(env), cwd=str(cwd), **kwargs)  # type: ignore[call-overload]
        except OSError as error:
            raise LaunchError(f"model {model_name}: cannot start: {error.strerror or error}") from None
        self._children[child.pid] = child
        start_time = process_start_time(child.pid)
        if start_time is None:
            child.poll()
            raise LaunchError(f"model {model_name}: its process ended at once; see {log_path}")
        return Launched(pid=child.pid, start_time=start_time, log_path=log_path, exit_path=exit_path)

    def reap(self) -> None:
        """Collect exited children this process started (no zombies left behind)."""
        for pid, child in list(self._children.items()):
            if child.poll() is not None:
                del self._children[pid]
