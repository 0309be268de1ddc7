"""Pure: turn one or more parsed nvidia-smi outputs into one :class:`Snapshot`.

``--query-compute-apps`` names a process's GPU by uuid / bus id, never by index: processes are
joined to GPUs here. A process whose GPU is not listed is kept apart (``unassigned_processes``),
never silently dropped.

Each output's GPUs are checked on their own first (:func:`checked_gpus`: a GPU index listed twice in
ONE output, memory used above total, negative memory: unreadable, with a warning). Several outputs
naming the same index are merged, which is how a CSV and a table complete each other; but when they
name it for two different physical GPUs (different uuid or bus id), its memory is not trusted either.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime
from typing import TypeVar

from gpuwarden.probe.parse_common import checked_gpus, normalize_bus_id, shown
from gpuwarden.records import GpuProcess, GpuReading, OutputKind, ParsedOutput, Snapshot

NO_DEVICES = "no devices were found"
_N = TypeVar("_N", int, float)


def build_snapshot(outputs: Sequence[ParsedOutput], taken_at: datetime, source: str) -> Snapshot:
    """Combine outputs (e.g. a ``--query-gpu`` CSV and a ``--query-compute-apps`` CSV)."""
    gpus, messages = _combined_gpus(outputs)
    driver_version = next((o.driver_version for o in outputs if o.driver_version), None)
    lists_processes = any(output.lists_processes for output in outputs)
    by_uuid = {gpu.uuid.lower(): gpu.index for gpu in gpus if gpu.uuid}
    by_bus = {gpu.bus_id: gpu.index for gpu in gpus if gpu.bus_id}
    known_indexes = {gpu.index for gpu in gpus}
    assigned: list[GpuProcess] = []
    unassigned: list[GpuProcess] = []
    seen: set[tuple[int, int]] = set()
    for output in outputs:
        for process in output.processes:
            index = process.gpu_index
            if index is None and process.gpu_uuid:
                index = by_uuid.get(process.gpu_uuid.lower())
            if index is None and process.gpu_bus_id:
                index = by_bus.get(normalize_bus_id(process.gpu_bus_id) or "")
            if index is None or index not in known_indexes:
                unassigned.append(process)
                continue
            if (index, process.pid) in seen and output.kind is OutputKind.PMON:
                continue  # pmon repeats what a richer output already said
            seen.add((index, process.pid))
            assigned.append(replace(process, gpu_index=index))
    error: str | None = None
    warnings = tuple(messages)
    unreadable = False
    if not gpus:
        error = " ".join(messages) or "nvidia-smi reported no GPU"
        warnings = ()
        unreadable = not says_no_devices(messages)
    return Snapshot(
        taken_at=taken_at,
        source=source,
        gpus=tuple(sorted(gpus, key=lambda g: g.index)),
        processes=tuple(assigned),
        unassigned_processes=tuple(unassigned),
        lists_processes=lists_processes,
        error=error,
        warnings=warnings,
        driver_version=driver_version,
        unreadable=unreadable,
    )


def _combined_gpus(outputs: Sequence[ParsedOutput]) -> tuple[tuple[GpuReading, ...], list[str]]:
    """Every output's GPUs, each output checked on its own, merged by index; and every message."""
    gpus: tuple[GpuReading, ...] = ()
    messages: list[str] = []
    untrusted: set[int] = set()
    for output in outputs:
        messages.extend(output.messages)
        checked, notes = checked_gpus(output.gpus)
        messages.extend(notes)
        if checked:
            conflicts = _identity_conflicts(gpus, checked)
            messages.extend(message for index, message in conflicts.items() if index not in untrusted)
            untrusted.update(conflicts)
            gpus = _merge_gpus(gpus, checked) if gpus else checked
    gpus = tuple(_untrusted(gpu) if gpu.index in untrusted else gpu for gpu in gpus)
    return gpus, messages


def _untrusted(gpu: GpuReading) -> GpuReading:
    """A GPU index two outputs give to different physical GPUs: neither its memory use nor its
    telemetry can be said to be this GPU's."""
    return replace(gpu, memory_used_mib=None, utilization_percent=None, temperature_c=None, power_draw_w=None,
                   power_limit_w=None, fan_percent=None)


def says_no_devices(messages: Sequence[str]) -> bool:
    """nvidia-smi's own word that this machine has no NVIDIA GPU (the one error that means CPU mode)."""
    return any(NO_DEVICES in message.lower() for message in messages)


def _identity_conflicts(first: Sequence[GpuReading], second: Sequence[GpuReading]) -> dict[int, str]:
    """GPU indexes two outputs give to different physical GPUs (their uuids or bus ids differ), each
    with the warning to show: which GPU an index means is then not known, nor whose memory it is."""
    known = {gpu.index: gpu for gpu in first}
    conflicts: dict[int, str] = {}
    for gpu in second:
        other = known.get(gpu.index)
        if other is None:
            continue
        pairs = (("uuid", other.uuid, gpu.uuid, str.lower), ("bus id", other.bus_id, gpu.bus_id, _bus))
        for what, before, after, key in pairs:
            if before and after and key(before) != key(after):
                conflicts[gpu.index] = (f"GPU {gpu.index} is {what} {shown(before, 48)} in one nvidia-smi output "
                                        f"and {shown(after, 48)} in another; its reading is not trusted (memory "
                                        "use treated as unreadable)")
                break
    return conflicts


def _bus(bus_id: str) -> str:
    """A bus id as compared: ``00000000:0c:00.0`` is ``0000:0C:00.0``."""
    return normalize_bus_id(bus_id) or bus_id


def _merge_gpus(first: tuple[GpuReading, ...], second: tuple[GpuReading, ...]) -> tuple[GpuReading, ...]:
    """Fill what one output lacks from another that names the same GPU index."""
    extra = {gpu.index: gpu for gpu in second}
    merged = []
    for gpu in first:
        other = extra.pop(gpu.index, None)
        if other is None:
            merged.append(gpu)
            continue
        merged.append(GpuReading(
            index=gpu.index,
            name=gpu.name or other.name,
            uuid=gpu.uuid or other.uuid,
            bus_id=gpu.bus_id or other.bus_id,
            memory_used_mib=_either(gpu.memory_used_mib, other.memory_used_mib),
            memory_total_mib=_either(gpu.memory_total_mib, other.memory_total_mib),
            utilization_percent=_either(gpu.utilization_percent, other.utilization_percent),
            temperature_c=_either(gpu.temperature_c, other.temperature_c),
            power_draw_w=_either(gpu.power_draw_w, other.power_draw_w),
            power_limit_w=_either(gpu.power_limit_w, other.power_limit_w),
            fan_percent=_either(gpu.fan_percent, other.fan_percent),
        ))
    return tuple(merged) + tuple(extra.values())


def _either(first: _N | None, second: _N | None) -> _N | None:
    """The first output's value where it has one, else the other's."""
    return first if first is not None else second


def failed_snapshot(taken_at: datetime, source: str, reason: str, *, no_gpu: bool = False) -> Snapshot:
    """No GPU data at all, and why (seed §6, Error Handling). Unreadable unless ``no_gpu``: only a
    machine known to have no NVIDIA GPU or driver is CPU mode; any other failure fails closed."""
    return Snapshot(taken_at=taken_at, source=source, lists_processes=False, error=reason, unreadable=not no_gpu)
