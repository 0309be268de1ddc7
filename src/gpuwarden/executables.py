"""Finding a program on PATH, and only there.

On Windows, ``shutil.which`` looks in the current folder before PATH, so an ``nvidia-smi.cmd`` left in
the folder gpuwarden was started from would run instead of the real one (and a hostile one could
report every GPU as free). This search looks only in the folders PATH names, with PATHEXT on Windows.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

DEFAULT_PATHEXT = ".COM;.EXE;.BAT;.CMD"


def find_on_path(program: str, path_env: str | None, *, environ: Mapping[str, str] | None = None,
                 platform: str = sys.platform) -> Path | None:
    """The first executable named ``program`` in the folders of ``path_env``; never the current
    folder unless PATH names it. A name with a folder in it is not searched for."""
    if not program or Path(program).name != program:
        return None
    env = os.environ if environ is None else environ
    for folder in (path_env or "").split(_pathsep(platform)):
        if not folder.strip():
            continue  # an empty PATH entry means the current folder on some systems: never here
        for name in _candidate_names(program, env, platform):
            candidate = Path(folder) / name
            if candidate.is_file() and (platform == "win32" or os.access(candidate, os.X_OK)):
                return candidate
    return None


def _pathsep(platform: str) -> str:
    return ";" if platform == "win32" else ":"


def _candidate_names(program: str, environ: Mapping[str, str], platform: str) -> list[str]:
    """``nvidia-smi`` -> ``nvidia-smi.COM``, ``nvidia-smi.EXE``, ... on Windows (PATHEXT)."""
    if platform != "win32":
        return [program]
    extensions = [ext for ext in (environ.get("PATHEXT") or DEFAULT_PATHEXT).split(";") if ext]
    if any(program.lower().endswith(ext.lower()) for ext in extensions):
        return [program]
    # Windows matches names without regard to case; both spellings keep a case-sensitive test honest.
    return list(dict.fromkeys(program + spelling for ext in extensions for spelling in (ext, ext.lower())))
