"""Frozen records shared by every layer: what nvidia-smi told us, and what gpuwarden decided.

Nothing here performs I/O. Values nvidia-smi does not give (``[N/A]``, ``[Not Supported]``, an
empty cell) are ``None``, never a crash and never a made-up number.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime


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


@dataclass(frozen=True)
class GpuReading:
    """One physical GPU as nvidia-smi printed it (MIG instances are never GPUs)."""

    index: int
    name: str | None = None
    uuid: str | None = None
    bus_id: str | None = None
    memory_used_mib: int | None = None
    memory_total_mib: int | None = None


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

    ``error`` is set when no GPU data could be had (no nvidia-smi, driver down, no devices): the
    status is then CPU mode. ``warnings`` are problems that left the GPU data usable.
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

    def processes_on(self, gpu_index: int) -> tuple[GpuProcess, ...]:
        return tuple(p for p in self.processes if p.gpu_index == gpu_index)


@dataclass(frozen=True)
class PlacementView:
    """What the classifier needs to know of one model gpuwarden placed: where, and its own PIDs."""

    model_name: str
    gpu_indexes: tuple[int, ...]
    own_pids: frozenset[int] = field(default_factory=frozenset)
