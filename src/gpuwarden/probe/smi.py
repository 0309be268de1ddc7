"""Runs nvidia-smi: finds it, bounds it with a timeout, and never lets it hang gpuwarden.

The query is ``nvidia-smi -q -x``: one call gives every GPU (index, name, uuid, bus id, memory
used/total) and every process on every GPU by index, graphics (G, C+G) ones included, which
``--query-compute-apps`` leaves out and which name the GPU by uuid only.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from gpuwarden.executables import find_on_path

QUERY_ARGS: tuple[str, ...] = ("-q", "-x")


class NvidiaSmiNotFound(Exception):
    """No nvidia-smi executable could be found."""


class NvidiaSmiFailed(Exception):
    """nvidia-smi could not be run, hung past its timeout, or printed nothing usable."""


@dataclass(frozen=True)
class SmiResult:
    stdout: str
    stderr: str
    returncode: int
    duration_seconds: float


def windows_candidates(environ: Mapping[str, str]) -> list[Path]:
    """Where the NVIDIA driver installs nvidia-smi.exe on Windows."""
    candidates = []
    system_root = environ.get("SystemRoot") or environ.get("SYSTEMROOT") or r"C:\Windows"
    candidates.append(Path(system_root) / "System32" / "nvidia-smi.exe")
    program_files = environ.get("ProgramFiles") or environ.get("PROGRAMFILES") or r"C:\Program Files"
    candidates.append(Path(program_files) / "NVIDIA Corporation" / "NVSMI" / "nvidia-smi.exe")
    return candidates


def find_nvidia_smi(
    configured: Path | None = None,
    environ: Mapping[str, str] | None = None,
    platform: str = sys.platform,
) -> Path:
    """The configured path wins; then PATH; then, on Windows, the driver's install locations."""
    env = os.environ if environ is None else environ
    if configured is not None:
        if configured.is_file():
            return configured
        raise NvidiaSmiFailed(f"nvidia_smi_path {configured} does not exist")
    found = find_on_path("nvidia-smi", env.get("PATH"), environ=env, platform=platform)
    if found is not None:
        return found
    looked = ["PATH"]
    if platform == "win32":
        for candidate in windows_candidates(env):
            looked.append(str(candidate))
            if candidate.is_file():
                return candidate
    raise NvidiaSmiNotFound(f"nvidia-smi not found (looked in {', '.join(looked)}): no NVIDIA driver installed?")


def run_nvidia_smi(executable: Path, args: Sequence[str], timeout_seconds: float) -> SmiResult:
    """Run it with a hard timeout. A child that ignores the kill is abandoned, not waited for."""
    creationflags = getattr(subprocess, "CREATE_NO_WINDOW", 0) if sys.platform == "win32" else 0
    started = time.monotonic()
    try:
        process = subprocess.Popen(
            [str(executable), *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            creationflags=creationflags,
        )
    except OSError as error:
        raise NvidiaSmiFailed(f"cannot run {executable}: {error.strerror or error}") from None
    try:
        stdout, stderr = process.communicate(timeout=timeout_seconds)
    except subprocess.TimeoutExpired:
        process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.communicate(timeout=2)  # stuck in the kernel (GPU lost): leave it, never hang the caller
        raise NvidiaSmiFailed(f"nvidia-smi did not answer within {timeout_seconds:g} s (killed)") from None
    return SmiResult(
        stdout=stdout.decode("utf-8", errors="replace"),
        stderr=stderr.decode("utf-8", errors="replace"),
        returncode=process.returncode,
        duration_seconds=time.monotonic() - started,
    )
