"""Frozen records shared by every layer: what nvidia-smi told us, what gpuwarden decided, where a
user wants a model (:class:`Selection`) and what a model is doing (:class:`ModelState`, :class:`ModelView`).

Nothing here performs I/O. Values nvidia-smi does not give (``[N/A]``, ``[Not Supported]``, an
empty cell) are ``None``, never a crash and never a made-up number.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from gpuwarden.errors import BadSelection

CPU_SELECTION = "cpu"
MAX_GPU_INDEX = 4095
MAX_SELECTED_GPUS = 64


class OutputKind(enum.Enum):
    """Which nvidia-smi output a text is, detected from its content."""

    TABLE = "table"  # plain `nvidia-smi`
    CSV_GPU = "csv-gpu"  # `--query-gpu=... --format=csv`
    CSV_APPS = "csv-apps"  # `--query-compute-apps=... --format=csv`
    XML = "xml"  # `-q -x`
    PMON = "pmon"  # `pmon -c 1`
    LIST = "list"  # `-L`
    ERROR = "error"  # an error message instead of data
    NVML = "nvml"  # not an nvidia-smi output: read through NVML (probe/nvml.py)


class StatusMode(enum.StrEnum):
    """What the status document can say about this machine's GPUs as a whole."""

    GPU = "gpu"  # GPUs were read: each has its own state
    CPU = "cpu"  # no NVIDIA GPU or driver here: models run on the CPU
    UNREADABLE = "unreadable"  # GPUs could not be read now: no load onto a GPU until they can


class GpuState(enum.Enum):
    """The classification of one GPU (seed §3), plus UNAVAILABLE for a GPU that cannot be read."""

    IDLE = "idle"
    MODEL_LOADED = "model_loaded"
    OCCUPIED_BY_OTHERS = "occupied_by_others"
    UNAVAILABLE = "unavailable"  # memory unreadable (GPU lost, ERR!): never safe to load onto


@dataclass(frozen=True)
class GpuProcess:
    """One process row as nvidia-smi printed it.

    ``name`` is exactly as printed (a leading ``...`` truncation included). The GPU is named by
    index (table, XML, pmon) or by uuid / bus id (``--query-compute-apps``); :func:`attach` joins.
    """

    pid: int
    name: str
    type: str | None = None  # C, G, C+G, M, M+C; None where the output does not show it
    used_memory_mib: int | None = None
    gpu_index: int | None = None
    gpu_uuid: str | None = None
    gpu_bus_id: str | None = None
    user: str | None = None  # filled from the operating system, never from nvidia-smi
    user_unknown: str | None = None  # why ``user`` is None: access denied, not on this machine, ended
    used_memory_source: str | None = None  # where used_memory_mib came from when not the snapshot's source


@dataclass(frozen=True)
class GpuReading:
    """One physical GPU as nvidia-smi printed it (MIG instances are never GPUs)."""

    index: int
    name: str | None = None
    uuid: str | None = None
    bus_id: str | None = None
    memory_used_mib: int | None = None
    memory_total_mib: int | None = None
    # Telemetry, where the output reports it (None: N/A, [Not Supported], or not in this output).
    utilization_percent: int | None = None  # GPU (SM) utilization
    temperature_c: int | None = None
    power_draw_w: float | None = None
    power_limit_w: float | None = None
    fan_percent: int | None = None


@dataclass(frozen=True)
class ParsedOutput:
    """What one nvidia-smi output says: GPUs, processes, and any error lines it printed."""

    kind: OutputKind
    gpus: tuple[GpuReading, ...] = ()
    processes: tuple[GpuProcess, ...] = ()
    messages: tuple[str, ...] = ()  # error lines (a whole error output, or lines before a table)
    driver_version: str | None = None
    lists_processes: bool = False  # whether this kind of output lists processes at all


@dataclass(frozen=True)
class Snapshot:
    """The GPUs of this machine at one moment, as one source saw them.

    ``error`` is set when no GPU data could be had. Then either the machine has no NVIDIA GPU or
    driver (nvidia-smi absent, "No devices were found": CPU mode), or ``unreadable`` is set: GPUs may
    be there but could not be read now (a hung or failing nvidia-smi, garbage, a driver error), and
    nothing may be loaded onto a GPU. A failure to read is never taken for "no GPUs".
    ``last_good_gpus`` / ``last_good_at`` are the GPUs of the last good reading, kept by whoever
    remembers it (the server), so an unreadable status can still name them. ``warnings`` are
    problems that left the GPU data usable.
    """

    taken_at: datetime
    source: str
    gpus: tuple[GpuReading, ...] = ()
    processes: tuple[GpuProcess, ...] = ()  # each with gpu_index set
    unassigned_processes: tuple[GpuProcess, ...] = ()  # GPU not among `gpus`
    lists_processes: bool = True
    error: str | None = None
    warnings: tuple[str, ...] = ()
    driver_version: str | None = None
    unreadable: bool = False
    last_good_gpus: tuple[GpuReading, ...] = ()
    last_good_at: datetime | None = None

    def processes_on(self, gpu_index: int) -> tuple[GpuProcess, ...]:
        return tuple(p for p in self.processes if p.gpu_index == gpu_index)


@dataclass(frozen=True)
class PlacementView:
    """What the classifier needs to know of one model gpuwarden placed: where, and its own PIDs."""

    model_name: str
    gpu_indexes: tuple[int, ...]
    own_pids: frozenset[int] = field(default_factory=frozenset)


class ModelState(enum.StrEnum):
    """Where a configured model is in its lifecycle: starting -> running -> stopping -> stopped, or failed."""

    NOT_LOADED = "not_loaded"  # never loaded (no placement recorded)
    STARTING = "starting"  # launched; its health check has not passed yet
    RUNNING = "running"
    STOPPING = "stopping"  # an unload is stopping its process tree
    STOPPED = "stopped"
    FAILED = "failed"  # exited with an error, vanished, or never became healthy

    @property
    def active(self) -> bool:
        """It holds its GPUs: starting, running or stopping."""
        return self in (ModelState.STARTING, ModelState.RUNNING, ModelState.STOPPING)


ACTIVE_MODEL_STATES: tuple[ModelState, ...] = tuple(state for state in ModelState if state.active)


@dataclass(frozen=True)
class Selection:
    """Where a user wants a model: these GPU indexes, or the CPU (no index). Build it with
    :func:`parse_selection` from untrusted input, or :meth:`gpus` / :meth:`cpu` in code."""

    gpu_indexes: tuple[int, ...]

    def __post_init__(self) -> None:
        for index in self.gpu_indexes:
            _gpu_index(index)
        if len(set(self.gpu_indexes)) != len(self.gpu_indexes):
            raise BadSelection("a GPU is selected twice")

    @classmethod
    def cpu(cls) -> Selection:
        return cls(())

    @classmethod
    def gpus(cls, *indexes: int) -> Selection:
        return parse_selection(list(indexes))

    @property
    def on_cpu(self) -> bool:
        return not self.gpu_indexes

    def __str__(self) -> str:
        return "cpu" if self.on_cpu else ",".join(map(str, self.gpu_indexes))


def _selection_parts(value: object) -> list[object] | None:
    """The parts of a selection, or None for the CPU. Raises BadSelection for other shapes."""
    if isinstance(value, str):
        text = value.strip()
        if text.lower() == CPU_SELECTION:
            return None
        return [part.strip() for part in text.split(",")] if text else []
    if isinstance(value, (list, tuple)):
        if len(value) == 1 and isinstance(value[0], str) and value[0].strip().lower() == CPU_SELECTION:
            return None
        return list(value)
    raise BadSelection("GPU selection must be a string like '0,1', a list of indexes, or 'cpu'")


def _gpu_index(part: object) -> int:
    if isinstance(part, bool):
        raise BadSelection(f"invalid GPU index {part!r}")
    if isinstance(part, int):
        index = part
    elif isinstance(part, str) and part.isascii() and part.isdigit() and len(part) <= 4:
        index = int(part)
    else:
        raise BadSelection(f"invalid GPU index {str(part)[:20]!r}: use numbers like '0,1' or 'cpu'")
    if index < 0 or index > MAX_GPU_INDEX:
        raise BadSelection(f"invalid GPU index {index}")
    return index


def parse_selection(value: object) -> Selection:
    """``"1"``, ``"0,1"``, ``[0, 1]``, ``"cpu"`` -> a Selection. Untrusted input: booleans, floats,
    duplicates, negative or huge indexes and anything else raise BadSelection."""
    parts = _selection_parts(value)
    if parts is None:
        return Selection.cpu()
    if not parts:
        raise BadSelection("GPU selection is empty: choose at least one GPU, or 'cpu'")
    if len(parts) > MAX_SELECTED_GPUS:
        raise BadSelection("GPU selection names too many GPUs")
    indexes: list[int] = []
    for part in parts:
        index = _gpu_index(part)
        if index in indexes:
            raise BadSelection(f"GPU {index} is selected twice")
        indexes.append(index)
    return Selection(tuple(indexes))


@dataclass(frozen=True)
class ModelView:
    """A configured model and what it is doing now."""

    name: str
    description: str
    default_gpus: int
    state: ModelState
    gpu_indexes: tuple[int, ...]
    pid: int | None
    port: int | None
    started_at: datetime | None
    ended_at: datetime | None
    owner: str | None
    exit_code: int | None
    error: str | None
    log_tail: str | None
    log_path: str | None
    uptime_seconds: float | None
    model_pid: int | None = None  # the model's own process; ``pid`` is its launcher's
    idle_since: datetime | None = None  # running on GPUs that have all been idle since then (None: busy, unknown)

    @classmethod
    def not_loaded(cls, name: str, description: str, default_gpus: int) -> ModelView:
        return cls(name, description, default_gpus, ModelState.NOT_LOADED, (), None, None, None, None, None, None,
                   None, None, None, None)

    @property
    def loaded(self) -> bool:
        return self.state.active

    @property
    def on_cpu(self) -> bool:
        return self.loaded and not self.gpu_indexes

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "description": self.description, "default_gpus": self.default_gpus,
            "state": self.state.value, "gpus": list(self.gpu_indexes), "cpu": self.on_cpu, "pid": self.pid,
            "model_pid": self.model_pid, "port": self.port,
            "started_at": self.started_at.isoformat() if self.started_at else None,
            "ended_at": self.ended_at.isoformat() if self.ended_at else None,
            "owner": self.owner, "exit_code": self.exit_code, "error": self.error,
            "log_tail": self.log_tail, "log_path": self.log_path,
            "uptime_seconds": round(self.uptime_seconds, 1) if self.uptime_seconds is not None else None,
            "idle_since": self.idle_since.isoformat() if self.idle_since else None,
        }


@dataclass(frozen=True)
class PlacementRecord:
    """One load of a model as the state database keeps it: where, which process, how it ended."""

    id: int
    model_name: str
    gpu_indexes: tuple[int, ...]
    gpu_uuids: tuple[str | None, ...]
    pid: int | None
    process_start_time: float | None
    port: int | None
    started_at: datetime
    owner: str | None
    state: ModelState
    ended_at: datetime | None = None
    exit_code: int | None = None
    error: str | None = None
    log_path: str | None = None
    log_tail: str | None = None

    @property
    def active(self) -> bool:
        return self.state.active

    @property
    def log_file(self) -> Path | None:
        return Path(self.log_path) if self.log_path else None
