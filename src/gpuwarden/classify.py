"""Pure: classify every GPU of a snapshot (seed §3) and build the status document.

``classify(snapshot, threshold_mib, placements)`` is the only place that decides idle / model
loaded / occupied. The same document feeds the CLI, the REST API and the dashboard.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from gpuwarden.desktop import NO_DESKTOP, DesktopRule, base_name
from gpuwarden.records import GpuProcess, GpuReading, GpuState, PlacementView, Snapshot, StatusMode

CPU_INDEX = "CPU"


@dataclass(frozen=True)
class ProcessInfo:
    pid: int
    process_name: str
    type: str | None
    used_memory_mib: int | None
    user: str | None
    model_name: str | None  # the gpuwarden model this process belongs to; None: foreign
    user_unknown: str | None = None  # why ``user`` is None
    used_memory_source: str | None = None  # None: the document's source; else where the value came from
    desktop: bool = False  # the desktop's (``desktop_processes``): shown, never "someone else"

    @property
    def foreign(self) -> bool:
        return self.model_name is None

    @property
    def someone_elses(self) -> bool:
        """Makes a GPU busy: not a gpuwarden model's, and not the desktop's."""
        return self.model_name is None and not self.desktop

    def to_dict(self) -> dict[str, Any]:
        return {
            "pid": self.pid,
            "process_name": self.process_name,
            "type": self.type,
            "used_memory_mib": self.used_memory_mib,
            "used_memory_source": self.used_memory_source,
            "user": self.user,
            "user_unknown_reason": self.user_unknown,
            "foreign": self.foreign,
            "desktop": self.desktop,
            "model_name": self.model_name,
        }


@dataclass(frozen=True)
class GpuStatus:
    index: int
    name: str | None
    uuid: str | None
    bus_id: str | None
    memory_used_mib: int | None
    memory_total_mib: int | None
    state: GpuState
    model_names: tuple[str, ...]  # the gpuwarden models placed here (usually one)
    select_enabled: bool  # seed §6: False only for occupied / unavailable GPUs
    loadable: bool  # a new model may be loaded here now (idle)
    process_info: tuple[ProcessInfo, ...]
    reason: str  # one sentence a person can read: why this state
    # Memory no listed process accounts for (another container, a vGPU guest); None where a listed
    # process's memory is N/A (Windows WDDM) or the GPU's memory is unreadable.
    unattributed_memory_mib: int | None = None
    # A model runs here and someone else uses the GPU too (a foreign process, or unattributed
    # memory above the threshold): the dashboard warns with ``reason``.
    shared_with_others: bool = False
    # What the desktop's processes hold (not counted as use); None: no desktop process here.
    desktop_memory_mib: int | None = None
    # Telemetry as the source reported it; None where it did not (N/A, [Not Supported], not in this output).
    utilization_percent: int | None = None
    temperature_c: int | None = None
    power_draw_w: float | None = None
    power_limit_w: float | None = None
    fan_percent: int | None = None

    @property
    def model_name(self) -> str | None:
        """The seed's ``model_name``: the model(s) placed here, comma-joined; None if none."""
        return ", ".join(self.model_names) if self.model_names else None

    @property
    def memory_used_fraction(self) -> float | None:
        if self.memory_used_mib is None or not self.memory_total_mib:
            return None
        return min(1.0, max(0.0, self.memory_used_mib / self.memory_total_mib))

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "name": self.name,
            "uuid": self.uuid,
            "bus_id": self.bus_id,
            "memory_used_mib": self.memory_used_mib,
            "memory_total_mib": self.memory_total_mib,
            "utilization_percent": self.utilization_percent,
            "temperature_c": self.temperature_c,
            "power_draw_w": self.power_draw_w,
            "power_limit_w": self.power_limit_w,
            "fan_percent": self.fan_percent,
            "state": self.state.value,
            "model_name": self.model_name,
            "select_enabled": self.select_enabled,
            "loadable": self.loadable,
            "reason": self.reason,
            "unattributed_memory_mib": self.unattributed_memory_mib,
            "desktop_memory_mib": self.desktop_memory_mib,
            "process_info": [p.to_dict() for p in self.process_info],
        }


@dataclass(frozen=True)
class StatusDocument:
    mode: StatusMode
    error: str | None
    warnings: tuple[str, ...]
    threshold_mib: int
    checked_at: datetime
    source: str
    gpus: tuple[GpuStatus, ...]
    unassigned_processes: tuple[ProcessInfo, ...]
    processes_listed: bool  # False where the output cannot list processes (seed's CSV form)
    last_good_at: datetime | None = None  # unreadable: when the GPUs were last read well (None: unknown)
    placements_known: bool = True  # False: the state database could not be read (a warning says so)

    @property
    def total_gpus(self) -> int:
        return len(self.gpus)

    @property
    def cpu_mode(self) -> bool:
        return self.mode is StatusMode.CPU

    @property
    def unreadable(self) -> bool:
        return self.mode is StatusMode.UNREADABLE

    @property
    def reading_age_seconds(self) -> float | None:
        """Unreadable: how old the last good reading is (None: there was none)."""
        if self.last_good_at is None:
            return None
        return max(0.0, (self.checked_at - self.last_good_at).total_seconds())

    def gpu(self, index: int) -> GpuStatus | None:
        return next((g for g in self.gpus if g.index == index), None)

    def to_dict(self) -> dict[str, Any]:
        cpu_entry = {"index": CPU_INDEX, "state": GpuState.IDLE.value, "model_name": None, "select_enabled": True}
        entries = [gpu.to_dict() for gpu in self.gpus]
        if self.mode is not StatusMode.GPU:  # the CPU is offered; in unreadable mode beside the last known GPUs
            entries.append(cpu_entry)
        return {
            "total_gpus": self.total_gpus,
            "mode": self.mode.value,
            "error": self.error,
            "last_good_reading_at": _iso(self.last_good_at),
            "reading_age_seconds": _rounded(self.reading_age_seconds),
            "warnings": list(self.warnings),
            "threshold_mib": self.threshold_mib,
            "checked_at": _iso(self.checked_at),
            "source": self.source,
            "processes_listed": self.processes_listed,
            "gpu_status": entries,
            "unassigned_processes": [p.to_dict() for p in self.unassigned_processes],
        }


def _iso(moment: datetime | None) -> str | None:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ") if moment is not None else None


def _rounded(seconds: float | None) -> float | None:
    return round(seconds, 1) if seconds is not None else None


def _owner(process: GpuProcess, placements: Sequence[PlacementView]) -> str | None:
    for placement in placements:
        if process.pid in placement.own_pids:
            return placement.model_name
    return None


def _process_info(process: GpuProcess, placements: Sequence[PlacementView], desktop: DesktopRule) -> ProcessInfo:
    model_name = _owner(process, placements)
    return ProcessInfo(
        pid=process.pid,
        process_name=process.name,
        type=process.type,
        used_memory_mib=process.used_memory_mib,
        user=process.user,
        user_unknown=process.user_unknown,
        model_name=model_name,
        used_memory_source=process.used_memory_source,
        desktop=model_name is None and desktop.matches(process.name, process.type),
    )


def _describe(processes: Sequence[ProcessInfo]) -> str:
    if not processes:
        return "no process listed (another user's container or a vGPU host may hold it)"
    shown = ", ".join(
        f"PID {p.pid} {p.process_name}" + (f" ({p.user})" if p.user else "") for p in processes[:3])
    more = f" and {len(processes) - 3} more" if len(processes) > 3 else ""
    return shown + more


def classify_gpu(
    gpu: GpuReading,
    processes: Sequence[GpuProcess],
    threshold_mib: int,
    placements: Sequence[PlacementView],
    desktop: DesktopRule = NO_DESKTOP,
) -> GpuStatus:
    """One GPU. Memory used strictly above ``threshold_mib`` is in use; a GPU where gpuwarden
    placed a model is ``model_loaded`` whatever its memory (a starting model may hold little). What
    the desktop's processes hold is shown and not counted."""
    infos = tuple(_process_info(p, placements, desktop) for p in processes)
    models = tuple(p.model_name for p in placements if gpu.index in p.gpu_indexes)
    used = gpu.memory_used_mib
    unattributed = _unattributed(used, infos)
    desktop_mib = _desktop_mib(used, infos, desktop.memory_limit_mib)
    counted_mib = None if used is None else max(0, _in_use(used, infos) - (desktop_mib or 0))
    shared = False
    if models:
        state = GpuState.MODEL_LOADED
        reason = f"model {', '.join(models)} loaded by gpuwarden"
        others = tuple(p for p in infos if p.someone_elses)
        if others:
            reason += f"; also used by others: {_describe(others)}"
        if unattributed is not None and unattributed > threshold_mib:
            reason += f"; {unattributed} MiB used by no listed process (someone else's container?)"
        shared = bool(others) or (unattributed is not None and unattributed > threshold_mib)
    elif used is None:
        state, reason = GpuState.UNAVAILABLE, "memory use unreadable (GPU lost or not supported): not safe to load"
    elif counted_mib is not None and counted_mib > threshold_mib:
        state = GpuState.OCCUPIED_BY_OTHERS
        others = tuple(p for p in infos if not p.desktop)
        reason = (f"occupied by someone else: {_used_text(used, infos, desktop_mib, counted_mib)} > "
                  f"{threshold_mib} MiB; {_describe(others)}")
    else:
        state, reason = GpuState.IDLE, _idle_reason(used, infos, desktop_mib, counted_mib or 0, threshold_mib)
    return GpuStatus(
        index=gpu.index, name=gpu.name, uuid=gpu.uuid, bus_id=gpu.bus_id, memory_used_mib=used,
        memory_total_mib=gpu.memory_total_mib, state=state, model_names=models,
        select_enabled=state in (GpuState.IDLE, GpuState.MODEL_LOADED), loadable=state is GpuState.IDLE,
        process_info=infos, reason=reason, unattributed_memory_mib=unattributed, shared_with_others=shared,
        desktop_memory_mib=desktop_mib, utilization_percent=gpu.utilization_percent,
        temperature_c=gpu.temperature_c, power_draw_w=gpu.power_draw_w, power_limit_w=gpu.power_limit_w,
        fan_percent=gpu.fan_percent)


def _desktop_mib(used: int | None, processes: Sequence[ProcessInfo], limit_mib: int) -> int | None:
    """What the desktop is credited with (None: no desktop process here), never above ``limit_mib``.
    Where only the desktop is listed, the memory nobody is listed for (the driver's own, and under
    Windows' WDDM every figure is N/A) is the desktop's too, up to the limit: a job the host does not
    list (WSL2, a container) still shows above it. With anything else listed, only known figures count."""
    desktop = [p for p in processes if p.desktop]
    if not desktop:
        return None
    known = sum(p.used_memory_mib or 0 for p in desktop)
    credited = max(used or 0, known) if len(desktop) == len(processes) else known
    return min(credited, limit_mib)


def _idle_reason(used: int, processes: Sequence[ProcessInfo], desktop_mib: int | None, counted_mib: int,
                 threshold_mib: int) -> str:
    if desktop_mib is None:
        return f"idle: {used} MiB used <= {threshold_mib} MiB"
    names = sorted({base_name(p.process_name) or p.process_name for p in processes if p.desktop})
    shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    return (f"idle: desktop {desktop_mib} MiB ({shown}) not counted; {counted_mib} MiB other use <= "
            f"{threshold_mib} MiB")


def _listed_mib(processes: Sequence[ProcessInfo]) -> int:
    """What the listed processes hold as nvidia-smi counts it (values filled from Windows' counters
    count differently and never make a GPU busier than nvidia-smi says)."""
    return sum(p.used_memory_mib or 0 for p in processes if p.used_memory_source is None)


def _in_use(used: int, processes: Sequence[ProcessInfo]) -> int:
    """What the GPU holds: its own figure, or what its listed processes hold if that is more (the
    figures disagree: believe the larger, never call a GPU idle whose processes hold memory)."""
    return max(used, _listed_mib(processes))


def _used_text(used: int, processes: Sequence[ProcessInfo], desktop_mib: int | None, counted_mib: int) -> str:
    listed = _listed_mib(processes)
    if listed > used:
        text = f"its processes hold {listed} MiB (nvidia-smi reports {used} MiB used)"
    else:
        text = f"{used} MiB used"
    if desktop_mib:
        text += f", {counted_mib} MiB of it not the desktop's"
    return text


def _unattributed(used: int | None, processes: Sequence[ProcessInfo]) -> int | None:
    """Memory no listed process accounts for; unknown where a value is missing or came from Windows'
    counters (which leave out the driver's own allocations, so a gap there means nothing)."""
    if used is None or any(p.used_memory_mib is None or p.used_memory_source is not None for p in processes):
        return None
    return max(0, used - sum(p.used_memory_mib or 0 for p in processes))


def unreadable_gpu(gpu: GpuReading, reason: str, placements: Sequence[PlacementView]) -> GpuStatus:
    """A GPU of the last good reading while the GPUs cannot be read: never loadable. A model
    gpuwarden placed there is still named (and can still be unloaded)."""
    models = tuple(p.model_name for p in placements if gpu.index in p.gpu_indexes)
    state = GpuState.MODEL_LOADED if models else GpuState.UNAVAILABLE
    if models:
        reason = f"model {', '.join(models)} loaded by gpuwarden; {reason}"
    return GpuStatus(
        index=gpu.index, name=gpu.name, uuid=gpu.uuid, bus_id=gpu.bus_id, memory_used_mib=None,
        memory_total_mib=gpu.memory_total_mib, state=state, model_names=models, select_enabled=False,
        loadable=False, process_info=(), reason=reason)


def classify(snapshot: Snapshot, threshold_mib: int, placements: Sequence[PlacementView] = (),
             desktop: DesktopRule = NO_DESKTOP) -> StatusDocument:
    """The status document for ``snapshot``: GPU mode; CPU mode (no NVIDIA GPU here, reason in
    ``error``); or unreadable (the GPUs could not be read: the last known ones, none loadable)."""
    error = snapshot.error
    if snapshot.gpus:
        mode = StatusMode.GPU
        gpus = tuple(classify_gpu(gpu, snapshot.processes_on(gpu.index), threshold_mib, placements, desktop)
                     for gpu in snapshot.gpus)
    elif snapshot.unreadable:
        mode = StatusMode.UNREADABLE
        reason = f"GPU status unreadable: {error}"
        gpus = tuple(unreadable_gpu(gpu, reason, placements) for gpu in snapshot.last_good_gpus)
    else:
        mode, gpus = StatusMode.CPU, ()
        error = error or "no NVIDIA GPU detected"
    return StatusDocument(
        mode=mode,
        error=error,
        warnings=snapshot.warnings,
        threshold_mib=threshold_mib,
        checked_at=snapshot.taken_at,
        source=snapshot.source,
        gpus=gpus,
        unassigned_processes=tuple(_process_info(p, placements, desktop) for p in snapshot.unassigned_processes),
        processes_listed=snapshot.lists_processes,
        last_good_at=snapshot.last_good_at if mode is StatusMode.UNREADABLE else None,
    )
