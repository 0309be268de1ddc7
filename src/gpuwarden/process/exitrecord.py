"""The launcher's records beside a model's log: ``<log>.model.json`` (the model's own process, written
when it starts) and ``<log>.exit.json`` (how it ended).

The launcher (:mod:`gpuwarden.process.shim`) writes them; the host reads them. The formats live here
only. The files are untrusted when read: anything that does not decode is no record.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

EXIT_SUFFIX = ".exit.json"
MODEL_SUFFIX = ".model.json"
STOP_SUFFIX = ".stop.json"
MAX_ERROR_CHARS = 1000
MAX_STOP_TIMEOUT_SECONDS = 24 * 3600.0


@dataclass(frozen=True)
class ExitRecord:
    exit_code: int | None
    error: str | None


def exit_path_for(log_path: Path | None) -> Path | None:
    """Where the launcher records how the model whose log is ``log_path`` ended."""
    return log_path.with_suffix(EXIT_SUFFIX) if log_path is not None else None


def model_path_for(log_path: Path | None) -> Path | None:
    """Where the launcher records the model's own process (its PID and start time)."""
    return log_path.with_suffix(MODEL_SUFFIX) if log_path is not None else None


def model_path_beside(exit_path: Path) -> Path:
    """The model record that goes with the exit record ``exit_path`` (the launcher knows only that)."""
    return exit_path.with_name(exit_path.name.removesuffix(EXIT_SUFFIX) + MODEL_SUFFIX)


def stop_path_for(log_path: Path | None) -> Path | None:
    """Where the host asks the launcher to stop its model (Windows: the launcher alone can send the
    model's console a Ctrl+Break)."""
    return log_path.with_suffix(STOP_SUFFIX) if log_path is not None else None


def stop_path_beside(exit_path: Path) -> Path:
    """The stop request that goes with the exit record ``exit_path``."""
    return exit_path.with_name(exit_path.name.removesuffix(EXIT_SUFFIX) + STOP_SUFFIX)


def _write_atomically(path: Path, data: dict[str, object]) -> None:
    """A temporary file, then a rename: a reader never sees half a record."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(data), encoding="utf-8")
    temporary.replace(path)


def write_exit_record(path: Path, exit_code: int | None, error: str | None) -> None:
    _write_atomically(path, {"exit_code": exit_code, "error": error, "ended_at": time.time()})


def write_model_record(path: Path, pid: int, start_time: float | None) -> None:
    _write_atomically(path, {"pid": pid, "start_time": start_time})


def write_stop_request(path: Path, timeout_seconds: float) -> None:
    """Ask the launcher to stop its model: gracefully, then forced after ``timeout_seconds``."""
    _write_atomically(path, {"timeout_seconds": timeout_seconds})


def read_stop_request(path: Path | None) -> float | None:
    """The grace period a stop request gives, or None where there is no request. The file is
    untrusted: a request that does not decode, or names no sensible grace, is a request to stop now."""
    if path is None or not path.exists():
        return None
    data = _read_json(path) or {}
    timeout = data.get("timeout_seconds")
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not math.isfinite(timeout):
        return 0.0
    return min(max(float(timeout), 0.0), MAX_STOP_TIMEOUT_SECONDS)


MAX_PID = 2**32


def read_model_record(path: Path | None) -> tuple[int, float] | None:
    """The model's own PID and start time as its launcher recorded them, or None. The file is
    untrusted: a PID out of range, or a start time that is missing or not a finite number (which
    would defeat the check that the PID is still the same process), is no record."""
    data = _read_json(path)
    if data is None:
        return None
    pid, start_time = data.get("pid"), data.get("start_time")
    if not isinstance(pid, int) or isinstance(pid, bool) or not 1 < pid < MAX_PID:
        return None
    if not isinstance(start_time, float) or not math.isfinite(start_time) or start_time <= 0:
        return None
    return pid, start_time


def _read_json(path: Path | None) -> dict[str, object] | None:
    if path is None:
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):  # RecursionError: [[[[...]]]] nested past the parser's depth
        return None
    return data if isinstance(data, dict) else None


def read_exit_record(path: Path | None) -> ExitRecord | None:
    """The record at ``path``, or None where there is none or it does not decode."""
    data = _read_json(path)
    if data is None:
        return None
    code = data.get("exit_code")
    error = data.get("error")
    return ExitRecord(exit_code=code if isinstance(code, int) and not isinstance(code, bool) else None,
                      error=error[:MAX_ERROR_CHARS] if isinstance(error, str) else None)
