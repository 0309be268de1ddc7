"""The launcher every model runs under: ``python -m gpuwarden.process.shim EXIT_FILE -- ARGV...``.

It starts the model's command, waits for it and writes the exit code to EXIT_FILE, so gpuwarden
learns how a model ended even when gpuwarden itself was not running at the time (it was
restarted, or the model was loaded from the CLI). A stop request (SIGTERM, CTRL_BREAK) is passed
on to the model.

On Windows the model runs in a job object of its own (:mod:`gpuwarden.process.jobs`), and the load
lasts while anything in that job runs. There the host asks for a stop with a request file beside
EXIT_FILE: the launcher sends the model's process group a Ctrl+Break (it shares the model's hidden
console; gpuwarden does not) and terminates the job once the request's grace period is over.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from gpuwarden.process import jobs
from gpuwarden.process.exitrecord import (
    model_path_beside,
    read_stop_request,
    stop_path_beside,
    write_exit_record,
    write_model_record,
)

POLL_SECONDS = 0.5

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _die_with_launcher() -> Callable[[], None] | None:
    """Linux: what the model's process runs before the model, so that the kernel sends it SIGTERM
    if the launcher dies (killed with SIGKILL, say). Resolved here, in the launcher, so nothing can
    fail in the child but the call itself."""
    if sys.platform != "linux":
        return None
    else:  # a platform branch, not a bare return: mypy checks each platform on its own
        return _pdeathsig_setter()


def _pdeathsig_setter() -> Callable[[], None] | None:
    import ctypes

    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # not glibc/musl: supervision still stops orphans
        return None
    launcher = os.getpid()

    def in_child() -> None:
        prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM))
        if os.getppid() != launcher:  # the launcher died before the call took effect
            os._exit(1)

    return in_child


def _start_time(pid: int) -> float | None:
    try:
        import psutil

        return float(psutil.Process(pid).create_time())
    except Exception:  # noqa: BLE001 - the record is a help, never a reason to fail the model
        return None


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        print("usage: python -m gpuwarden.process.shim EXIT_FILE -- COMMAND...", file=sys.stderr)
        return 2
    exit_file = Path(argv[0])
    command = argv[2:]
    job = _new_job(exit_file)
    try:
        child = subprocess.Popen(command, preexec_fn=_die_with_launcher(), creationflags=_child_flags(job))
    except (OSError, subprocess.SubprocessError) as error:
        message = f"cannot start {command[0]!r}: {getattr(error, 'strerror', None) or error}"
        _say(message)
        write_exit_record(exit_file, 127, message)
        return 127
    job = _contain(job, child)
    with contextlib.suppress(OSError):
        write_model_record(model_path_beside(exit_file), child.pid, _start_time(child.pid))
    for name in ("SIGTERM", "SIGINT", "SIGBREAK", "SIGHUP"):
        if hasattr(signal, name):
            with contextlib.suppress(OSError, ValueError):
                signal.signal(getattr(signal, name), lambda signum, frame: _forward(child, signum))
    code = _Watch(child, job, stop_path_beside(exit_file)).run()
    write_exit_record(exit_file, code, None)
    with contextlib.suppress(OSError):
        stop_path_beside(exit_file).unlink(missing_ok=True)
    return 0


def _say(message: str) -> None:
    print(f"gpuwarden: {message}", file=sys.stderr, flush=True)


def _new_job(exit_file: Path) -> jobs.Job | None:
    """Windows: the job the model will run in. Without one the model still runs, stopped by a walk of
    its process tree as on other systems, and the log says why."""
    if sys.platform == "win32":
        try:
            return jobs.create_job(exit_file)
        except OSError as error:
            _say(f"the model runs without a job object ({error.strerror or error}); an unload stops the"
                 " processes it can still find")
    return None


def _contain(job: jobs.Job | None, child: subprocess.Popen[bytes]) -> jobs.Job | None:
    """Put the model (started suspended) in its job, and let it run."""
    if job is None:
        return None
    try:
        job.adopt(int(getattr(child, "_handle")))  # noqa: B009 - Popen's own handle, with every right
    except OSError as error:
        _say(f"the model runs without a job object ({error.strerror or error})")
        job.close()
        return None
    return job


def _child_flags(job: jobs.Job | None) -> int:
    """Windows: the model gets a process group of its own, so CTRL_BREAK_EVENT can be sent to it; it
    starts suspended when it goes into a job, so that it starts nothing outside the job."""
    if sys.platform == "win32":
        return subprocess.CREATE_NEW_PROCESS_GROUP | (jobs.CREATE_SUSPENDED if job is not None else 0)
    else:  # a platform branch, not a bare return: mypy checks each platform on its own
        return 0


def _forward(child: subprocess.Popen[bytes], signum: int) -> None:
    """Pass a stop request on to the model. Windows accepts only SIGTERM (TerminateProcess) and the
    console events: Ctrl+C and Ctrl+Break become CTRL_BREAK_EVENT, the one a process group receives."""
    with contextlib.suppress(OSError, ValueError):
        if sys.platform != "win32":
            child.send_signal(signum)
        elif signum == signal.SIGTERM:
            child.terminate()
        else:
            child.send_signal(getattr(signal, "CTRL_BREAK_EVENT", signal.SIGTERM))


class _Watch:
    """Wait for the model in short steps (on Windows a signal handler runs only between them), and
    carry out the host's stop request: a graceful request first, then forced after its grace."""

    def __init__(self, child: subprocess.Popen[bytes], job: jobs.Job | None, stop_path: Path) -> None:
        self.child = child
        self.job = job
        self.stop_path = stop_path
        self.code: int | None = None
        self.deadline: float | None = None

    def run(self) -> int:
        """The model's exit code, once the model and (Windows) everything in its job have ended. A job
        that cannot be read any more is left to the host (the launcher still records the exit)."""
        while True:
            try:
                return self._watch()
            except OSError as error:
                _say(f"cannot watch the model's job object any more ({error}); watching the model alone")
                self.job = None

    def _watch(self) -> int:
        while True:
            if self.code is None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.code = self.child.wait(timeout=POLL_SECONDS)
                    self._ended()
            elif self.job is None or self.job.active_processes() == 0:
                return self.code
            else:
                time.sleep(POLL_SECONDS)
            self._follow_stop_request()

    def _ended(self) -> None:
        _say(f"model process exited with code {self.code}")
        if self.job is not None and self.job.active_processes():
            _say(f"{self.job.active_processes()} process(es) it started still run; the load ends when they do")

    def _follow_stop_request(self) -> None:
        if self.deadline is None:
            grace_seconds = read_stop_request(self.stop_path)
            if grace_seconds is None:
                return
            _say(f"stop requested (forced after {grace_seconds:g} s)")
            self.deadline = time.monotonic() + (grace_seconds if self._ask_to_stop() else 0.0)
        if time.monotonic() >= self.deadline:
            self._force()

    def _ask_to_stop(self) -> bool:
        """Windows: Ctrl+Break to the model's process group; elsewhere SIGTERM. False: not delivered."""
        try:
            if sys.platform == "win32":  # to the group: its leader may have exited, its members not
                os.kill(self.child.pid, signal.CTRL_BREAK_EVENT)
            else:
                self.child.send_signal(signal.SIGTERM)
        except (OSError, ValueError) as error:
            _say(f"cannot ask the model to stop ({error}); stopping it now")
            return False
        return True

    def _force(self) -> None:
        if self.job is not None:
            self.job.terminate()
        elif self.code is None:
            with contextlib.suppress(OSError):
                self.child.kill()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
