"""The launcher's record of how a model ended: ``<log>.exit.json`` beside the model's log.

The launcher (:mod:`gpuwarden.process.shim`) writes it; the host reads it. The format lives here
only. The file is untrusted when read: anything that does not decode is no record.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

EXIT_SUFFIX = ".exit.json"
MAX_ERROR_CHARS = 1000


@dataclass(frozen=True)
class ExitRecord:
    exit_code: int | None
    error: str | None


def exit_path_for(log_path: Path | None) -> Path | None:
    """Where the launcher records how the model whose log is ``log_path`` ended."""
    return log_path.with_suffix(EXIT_SUFFIX) if log_path is not None else None


def write_exit_record(path: Path, exit_code: int | None, error: str | None) -> None:
    """Write atomically (a temporary file, then a rename), so a reader never sees half a record."""
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps({"exit_code": exit_code, "error": error, "ended_at": time.time()}),
                         encoding="utf-8")
    temporary.replace(path)


def read_exit_record(path: Path | None) -> ExitRecord | None:
    """The record at ``path``, or None where there is none or it does not decode."""
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
    return ExitRecord(exit_code=code if isinstance(code, int) and not isinstance(code, bool) else None,
                      error=error[:MAX_ERROR_CHARS] if isinstance(error, str) else None)
