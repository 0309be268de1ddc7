"""Quick start, on Windows and Linux, with nothing but Python 3.11+:

    python run.py demo     # installs gpuwarden (only) into .venv, starts it on built-in demo data
    python run.py test     # adds the test tools to .venv, runs ruff, mypy (linux and win32), the
                           # import contracts (import-linter) and every test

    python run.py test-windows   # Linux with root and apt (CI): the whole suite again under a real
                                 # Windows CPython in Wine (tools/windows-wine.sh installs both)

Extra arguments go to the command (``python run.py demo --port 9000``, ``python run.py test -k parse``).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
STAMP = VENV / "gpuwarden-install.sha256"
CHROMIUM = Path(os.environ.get("GPUWARDEN_CHROMIUM", "/usr/bin/chromium"))


def venv_python() -> Path:
    return VENV / ("Scripts/python.exe" if sys.platform == "win32" else "bin/python")


def run(*command: str | Path, env: dict[str, str] | None = None) -> int:
    print("+", " ".join(str(part) for part in command), flush=True)
    return subprocess.call([str(part) for part in command], cwd=ROOT, env=env)


def ensure_installed(*, tests: bool) -> Path:
    """Create .venv and install gpuwarden (with its test tools for ``tests``); again only when
    pyproject.toml changes, or the tests need tools the demo did not install."""
    if sys.version_info < (3, 11):
        sys.exit(f"gpuwarden needs Python 3.11 or newer (this is {sys.version.split()[0]})")
    python = venv_python()
    if not python.exists():
        import venv  # only here: run.py's other parts also run where venv is missing (an embedded Python)

        print(f"creating {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    installed = STAMP.read_text().split() if STAMP.exists() else []
    if installed[:1] != [digest] or (tests and "test" not in installed):
        if run(python, "-m", "pip", "install", "--quiet", "--upgrade", "pip") != 0:
            sys.exit("pip upgrade failed")
        if run(python, "-m", "pip", "install", "--quiet", "-e", ".[test]" if tests else ".") != 0:
            sys.exit("installing gpuwarden failed (see pip's message above)")
        STAMP.write_text(f"{digest} test" if tests else digest)
    return python


def ensure_chromium() -> None:
    """Browser tests drive Debian's chromium; install it where apt-get and root are at hand."""
    if CHROMIUM.exists() or sys.platform != "linux":
        return
    apt = shutil.which("apt-get")
    if apt and hasattr(os, "geteuid") and os.geteuid() == 0:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        if run(apt, "update", "-qq", env=env) == 0:
            run(apt, "install", "-y", "-qq", "chromium", env=env)
    if not CHROMIUM.exists():
        print(f"note: {CHROMIUM} not found: the browser tests will be skipped "
              "(install chromium, or set GPUWARDEN_CHROMIUM to a Chromium/Chrome binary)", flush=True)


def test_windows(extra: list[str]) -> int:
    """The suite under Windows' own CPython, in Wine: Windows paths, code pages, process and signal rules."""
    if sys.platform != "linux":
        print("test-windows runs Windows' Python in Wine on Linux; on Windows, run `py run.py test`", flush=True)
        return 2
    if run("bash", ROOT / "tools" / "windows-wine.sh", ROOT) != 0:
        print("setting up Wine and its Windows Python failed (see above)", flush=True)
        return 1
    wpy = Path(os.environ.get("WINE_PY_HOME", "/tmp/gw-wine")) / "bin" / "wpy"
    return run(wpy, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:faulthandler", *(extra or ["-q", "tests"]))


def demo(python: Path, extra: list[str]) -> int:
    """Run the demo server in the place of this script: stopping ``run.py`` (Ctrl+C, or its PID
    killed) stops the server too."""
    command = [str(python), "-m", "gpuwarden", "serve", "--demo", *extra]
    print("+", " ".join(command), flush=True)
    if sys.platform == "win32":
        server = subprocess.Popen(command, cwd=ROOT)
        _end_with_this_process(server.pid)
        try:
            return server.wait()
        except KeyboardInterrupt:  # Ctrl+C reached both; give the server its moment to stop
            try:
                return server.wait(15)
            except subprocess.TimeoutExpired:
                server.kill()
                return 1
    else:
        os.chdir(ROOT)
        os.execv(command[0], command)  # the same PID: a signal to run.py reaches the server itself


def _end_with_this_process(pid: int) -> None:
    """Windows: put the server in a kill-on-close job object held only by this process, so that it
    ends when run.py ends, however it ends (taskkill /PID included). The job lets the demo models
    break away: like any model, they outlive the server (the next demo adopts them)."""
    import ctypes
    from ctypes import wintypes

    class Limits(ctypes.Structure):  # JOBOBJECT_EXTENDED_LIMIT_INFORMATION
        _fields_ = [("times", ctypes.c_int64 * 2), ("flags", wintypes.DWORD), ("sizes", ctypes.c_size_t * 2),
                    ("processes", wintypes.DWORD), ("affinity", ctypes.c_size_t), ("classes", wintypes.DWORD * 2),
                    ("io", ctypes.c_uint64 * 6), ("memory", ctypes.c_size_t * 4)]

    kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
    kernel32.CreateJobObjectW.restype = kernel32.OpenProcess.restype = wintypes.HANDLE
    job = kernel32.CreateJobObjectW(None, None)
    limits = Limits(flags=0x2000 | 0x0800)  # JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE | JOB_OBJECT_LIMIT_BREAKAWAY_OK
    process = kernel32.OpenProcess(0x0101, False, pid)  # PROCESS_SET_QUOTA | PROCESS_TERMINATE
    if not (job and process and kernel32.SetInformationJobObject(wintypes.HANDLE(job), 9, ctypes.byref(limits),
                                                                 ctypes.sizeof(limits))
            and kernel32.AssignProcessToJobObject(wintypes.HANDLE(job), wintypes.HANDLE(process))):
        print("note: if run.py is killed, stop the demo server too", flush=True)


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("demo", "test", "test-windows"):
        print(__doc__)
        return 2
    if argv[0] == "test-windows":
        return test_windows(argv[1:])
    python = ensure_installed(tests=argv[0] == "test")
    if argv[0] == "demo":
        return demo(python, argv[1:])
    ensure_chromium()
    lint_imports = "import sys; from importlinter.cli import lint_imports; sys.exit(lint_imports())"
    for check in (["-m", "ruff", "check", "src", "tests", "bench", "tools", "run.py"],
                  ["-m", "mypy"], ["-m", "mypy", "--platform", "win32"], ["-c", lint_imports]):
        if run(python, *check) != 0:
            return 1
    return run(python, "-m", "pytest", *argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
