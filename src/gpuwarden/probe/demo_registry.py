"""The demo's GPU source (``gpu_source = "demo"``): the simulated machine of
:mod:`gpuwarden.probe.simulated`, with the demo models that really run on it.

A demo model server (:mod:`gpuwarden.demo.model_server`) registers itself in a folder of the demo's
state directory: one small JSON file per process, ``{"pid", "start_time", "gpus", "memory_mib",
"name"}``, written when it starts loading and again when it is ready, removed when it stops. The files
are untrusted: anything that does not decode, or names a process that no longer runs, is ignored.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import psutil

from gpuwarden.probe.simulated import DEMO_GPUS, DESCRIPTION, DemoModelProcess, simulate
from gpuwarden.probe.users import ProcessLookup, with_users
from gpuwarden.records import Snapshot

REGISTRY_FOLDER = "demo-gpus"
MAX_REGISTERED = 64
MAX_FILE_BYTES = 4096
MAX_MEMORY_MIB = 1_000_000
START_TIME_TOLERANCE_SECONDS = 1.0


def registry_dir(state_dir: Path) -> Path:
    return state_dir / REGISTRY_FOLDER


def register_this_process(folder: Path, gpu_indexes: list[int], memory_mib: int) -> Path:
    """Register the calling demo model process (atomically: a reader never sees half a file)."""
    me = psutil.Process()
    try:
        name = me.name()
    except (psutil.Error, OSError):  # Wine cannot tell a process's name; Windows and Linux can
        name = Path(sys.executable).name
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{me.pid}.json"
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps({"pid": me.pid, "start_time": me.create_time(), "gpus": gpu_indexes,
                                     "memory_mib": memory_mib, "name": name}), encoding="utf-8")
    temporary.replace(path)
    return path


def _decoded(data: object) -> tuple[DemoModelProcess, float] | None:
    if not isinstance(data, dict):
        return None
    pid, start, gpus, memory, name = (data.get(key) for key in ("pid", "start_time", "gpus", "memory_mib", "name"))
    if not isinstance(pid, int) or isinstance(pid, bool) or not 1 < pid < 2**32:
        return None
    if not isinstance(start, float) or not math.isfinite(start):
        return None
    if not isinstance(gpus, list) or not all(isinstance(g, int) and 0 <= g < len(DEMO_GPUS) for g in gpus):
        return None
    if not isinstance(memory, int) or not 0 <= memory <= MAX_MEMORY_MIB or not isinstance(name, str):
        return None
    return DemoModelProcess(pid=pid, name=name[:64], gpu_indexes=tuple(sorted(set(gpus))), memory_mib=memory), start


def _running(pid: int, start_time: float) -> bool:
    try:
        process = psutil.Process(pid)
        return (abs(process.create_time() - start_time) <= START_TIME_TOLERANCE_SECONDS
                and process.status() != psutil.STATUS_ZOMBIE)
    except (psutil.Error, OSError, ValueError):
        return False


def registered_models(folder: Path) -> list[DemoModelProcess]:
    """The demo model processes registered in ``folder`` that still run (the registrations of those
    that ended are removed)."""
    found = []
    with contextlib.suppress(OSError):
        for path in sorted(folder.glob("*.json"))[:MAX_REGISTERED]:
            try:
                with path.open("rb") as handle:
                    decoded = _decoded(json.loads(handle.read(MAX_FILE_BYTES)))
            except (OSError, ValueError, RecursionError):
                continue
            if decoded is None:
                continue
            if _running(decoded[0].pid, decoded[1]):
                found.append(decoded[0])
            else:  # a demo model killed before it could remove its registration
                with contextlib.suppress(OSError):
                    path.unlink()
    return found


class SimulatedSource:
    """The demo machine now, with the demo models running on it (their users from the OS)."""

    def __init__(self, folder: Path, lookup: ProcessLookup, clock: Callable[[], datetime]) -> None:
        self._folder = folder
        self._lookup = lookup
        self._clock = clock
        self._started_at = clock()  # the simulated machine's training job runs from here

    @property
    def description(self) -> str:
        return DESCRIPTION

    def snapshot(self) -> Snapshot:
        models = registered_models(self._folder)
        snapshot = simulate(self._clock(), models, windows=sys.platform == "win32", started_at=self._started_at)
        pids = {model.pid for model in models}
        models_with_users = iter(with_users([p for p in snapshot.processes if p.pid in pids], self._lookup))
        return replace(snapshot, processes=tuple(next(models_with_users) if p.pid in pids else p
                                                 for p in snapshot.processes))
