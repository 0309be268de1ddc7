"""Pure: per-process GPU memory from Windows' performance counters, where nvidia-smi has none.

Under the WDDM driver model (GeForce, most workstation cards on Windows) nvidia-smi and NVML print
"N/A" for every process's memory. Windows counts it per process and adapter, as Task Manager shows:
``\\GPU Process Memory(pid_<PID>_luid_0x<HIGH>_0x<LOW>_phys_<N>)\\Dedicated Usage`` (bytes).

The counters name adapters by LUID, which nvidia-smi does not print, so the adapter of each GPU is
learned from the processes themselves: a PID nvidia-smi lists on one GPU that uses one adapter ties
that adapter to that GPU. A value is filled in only where the match is unambiguous, and marked with
its source (:data:`COUNTER_SOURCE`); anything unclear stays unknown.

Read from recorded counter output only, so far: unverified on real hardware until seen there.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

from gpuwarden.records import GpuProcess, Snapshot

COUNTER_PATH = r"\GPU Process Memory(*)\Dedicated Usage"
COUNTER_SOURCE = "windows-gpu-counters"
INSTANCE = re.compile(r"^pid_(\d{1,10})_luid_(0x[0-9a-f]{1,8})_(0x[0-9a-f]{1,8})_phys_(\d{1,3})$", re.IGNORECASE)
MIB = 1024 * 1024
MAX_BYTES = 1 << 50  # a petabyte: anything larger is not a reading


@dataclass(frozen=True)
class CounterSample:
    """One counter instance: a process's dedicated memory on one adapter (one physical part of it)."""

    pid: int
    luid: str
    dedicated_bytes: int


def parse_samples(pairs: Iterable[tuple[str, float]]) -> list[CounterSample]:
    """Counter instance names and values, as PDH returns them; anything malformed is skipped."""
    samples = []
    for name, value in pairs:
        match = INSTANCE.match(name.strip())
        if match is None or not isinstance(value, int | float) or not 0 <= value < MAX_BYTES:
            continue
        luid = f"{int(match.group(2), 16):08x}{int(match.group(3), 16):08x}"
        samples.append(CounterSample(int(match.group(1)), luid, int(value)))
    return samples


def usage_by_process(samples: Iterable[CounterSample]) -> dict[int, dict[str, int]]:
    """PID -> adapter LUID -> dedicated bytes (the physical parts of an adapter summed). An adapter a
    process holds 0 bytes on is kept: the process uses it (it has a counter there)."""
    usage: dict[int, dict[str, int]] = defaultdict(dict)
    for sample in samples:
        usage[sample.pid][sample.luid] = usage[sample.pid].get(sample.luid, 0) + sample.dedicated_bytes
    return dict(usage)


def adapters_of_gpus(processes: Iterable[GpuProcess], usage: Mapping[int, Mapping[str, int]]) -> dict[str, int]:
    """Adapter LUID -> GPU index, learned from PIDs listed on one GPU that use one adapter. An
    adapter that would belong to two GPUs, or a GPU that would have two adapters, is dropped."""
    gpus_of_pid: dict[int, set[int]] = defaultdict(set)
    for process in processes:
        if process.gpu_index is not None:
            gpus_of_pid[process.pid].add(process.gpu_index)
    seen: dict[str, set[int]] = defaultdict(set)
    for pid, gpus in gpus_of_pid.items():
        adapters = usage.get(pid, {})
        if len(gpus) == 1 and len(adapters) == 1:
            seen[next(iter(adapters))].add(next(iter(gpus)))
    learned = {luid: next(iter(gpus)) for luid, gpus in seen.items() if len(gpus) == 1}
    per_gpu: dict[int, int] = defaultdict(int)
    for gpu in learned.values():
        per_gpu[gpu] += 1
    return {luid: gpu for luid, gpu in learned.items() if per_gpu[gpu] == 1}


def plausible(adapters: Mapping[str, int], usage: Mapping[int, Mapping[str, int]],
              used_mib_of_gpu: Mapping[int, int | None]) -> dict[str, int]:
    """The adapters whose processes together hold no more than nvidia-smi says their GPU has in use
    (with room for rounding and timing only): an adapter whose memory the GPU does not show is not
    that GPU's."""
    totals: dict[str, int] = defaultdict(int)
    for adapters_of_pid in usage.values():
        for luid, used in adapters_of_pid.items():
            totals[luid] += used
    kept = {}
    for luid, gpu in adapters.items():
        used_mib = used_mib_of_gpu.get(gpu)
        if used_mib is not None and totals[luid] <= (used_mib * 1.02 + 16) * MIB:
            kept[luid] = gpu
    return kept


def fill_process_memory(snapshot: Snapshot, samples: Iterable[CounterSample]) -> Snapshot:
    """The snapshot with each process's unknown memory filled in from the counters where the
    adapter is certain; values nvidia-smi gave are never replaced."""
    if all(p.used_memory_mib is not None for p in snapshot.processes):
        return snapshot
    usage = usage_by_process(samples)
    used_mib_of_gpu = {gpu.index: gpu.memory_used_mib for gpu in snapshot.gpus}
    adapters = plausible(adapters_of_gpus(snapshot.processes, usage), usage, used_mib_of_gpu)

    def filled(process: GpuProcess) -> GpuProcess:
        if process.used_memory_mib is not None or process.gpu_index is None:
            return process
        here = [used for luid, used in usage.get(process.pid, {}).items() if adapters.get(luid) == process.gpu_index]
        if len(here) != 1:
            return process
        return replace(process, used_memory_mib=round(here[0] / MIB), used_memory_source=COUNTER_SOURCE)

    return replace(snapshot, processes=tuple(filled(p) for p in snapshot.processes))
