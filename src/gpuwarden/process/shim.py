"""The launcher every model runs under: ``python -m gpuwarden.process.shim EXIT_FILE -- ARGV...``.

It starts the model's command, waits for it and writes the exit code to EXIT_FILE, so gpuwarden
learns how a model ended even when gpuwarden itself was not running at the time (it was
restarted, or the model was loaded from the CLI). A stop request (SIGTERM, CTRL_BREAK) is passed
on to the model.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from gpuwarden.process.exitrecord import model_path_beside, write_exit_record, write_model_record

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
    try:
        child = subprocess.Popen(command, preexec_fn=_die_with_launcher(), creationflags=_child_flags())
    except (OSError, subprocess.SubprocessError) as error:
        message = f"cannot start {command[0]!r}: {getattr(error, 'strerror', None) or error}"
        print(f"gpuwarden: {message}", file=sys.stderr, flush=True)
        write_exit_record(exit_file, 127, message)
        return 127
    with contextlib.suppress(OSError):
        write_model_record(model_path_beside(exit_file), child.pid, _start_time(child.pid))
    for name in ("SIGTERM", "SIGINT", "SIGBREAK", "SIGHUP"):
        if hasattr(signal, name):
            with contextlib.suppress(OSError, ValueError):
                signal.signal(getattr(signal, name), lambda signum, frame: _forward(child, signum))
    code = _wait(child)
    print(f"gpuwarden: model process exited with code {code}", file=sys.stderr, flush=True)
    write_exit_record(exit_file, code, None)
    return 0


def _child_flags() -> int:
    """Windows: the model gets a process group of its own, so CTRL_BREAK_EVENT can be sent to it."""
    return getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0) if sys.platform == "win32" else 0


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


def _wait(child: subprocess.Popen[bytes]) -> int:
    """Wait in short steps: on Windows a signal handler runs only between them, so a stop request is
    passed on at once instead of after the model has ended by itself."""
    while True:
        try:
            return child.wait(timeout=0.5)
        except subprocess.TimeoutExpired:
            continue


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
