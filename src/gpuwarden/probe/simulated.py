"""Pure: the demo's simulated machine (``serve --demo``, ``gpu_source = "demo"``). Not a recording:
a machine whose GPUs change as people use it.

- Three GPUs: two RTX 4090s and an RTX A4000 that drives the monitors (the desktop's processes).
- A demo model that gpuwarden loads holds memory (and works the GPU) on the GPUs it was given, as
  the model server registers itself (:mod:`gpuwarden.probe.demo_registry`).
- GPU 1 is taken by someone else's training job for the first three minutes of every five since the
  demo started: a process with a PID, a name and a user, which comes and goes on its own.

Utilization, temperature, power and fan follow from what runs, and drift with time.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime

from gpuwarden.records import GpuProcess, GpuReading, Snapshot

DESCRIPTION = "demo (a simulated machine)"
FOREIGN_GPU_INDEX = 1
DESKTOP_GPU_INDEX = 2
FOREIGN_CYCLE_SECONDS = 300
FOREIGN_PRESENT_SECONDS = 180
FOREIGN_MEMORY_MIB = 18_432
FOREIGN_USER = "alice"
FOREIGN_PID_BASE = 52_000
DRIVER_MEMORY_MIB = 1


@dataclass(frozen=True)
class DemoGpu:
    name: str
    memory_total_mib: int
    power_idle_w: float
    power_limit_w: float


DEMO_GPUS = (
    DemoGpu("NVIDIA GeForce RTX 4090", 24_564, 21.0, 450.0),
    DemoGpu("NVIDIA GeForce RTX 4090", 24_564, 19.0, 450.0),
    DemoGpu("NVIDIA RTX A4000", 16_376, 12.0, 140.0),
)


@dataclass(frozen=True)
class DemoModelProcess:
    """A demo model's process as it registered: where it runs, and what it holds on each GPU."""

    pid: int
    name: str
    gpu_indexes: tuple[int, ...]
    memory_mib: int


def foreign_process(seconds_since_start: float, *, windows: bool) -> GpuProcess | None:
    """Someone else's training job on GPU 1, while it runs (a new PID each time it comes back)."""
    cycle, into_cycle = divmod(int(max(seconds_since_start, 0.0)), FOREIGN_CYCLE_SECONDS)
    if into_cycle >= FOREIGN_PRESENT_SECONDS:
        return None
    return GpuProcess(pid=FOREIGN_PID_BASE + cycle % 5_000 * 3, name="python.exe" if windows else "python3",
                      type="C", used_memory_mib=FOREIGN_MEMORY_MIB, gpu_index=FOREIGN_GPU_INDEX, user=FOREIGN_USER)


def desktop_processes(*, windows: bool) -> tuple[GpuProcess, ...]:
    """What drives the monitors on GPU 2: the Windows shell, or an X server and GNOME."""
    if windows:
        shell = (("C:\\Windows\\System32\\dwm.exe", 412), ("C:\\Windows\\explorer.exe", 96),
                 ("...h_cw5n1h2txyewy\\SearchHost.exe", 38))
        return tuple(GpuProcess(pid=1_100 + 12 * n, name=name, type="C+G", used_memory_mib=mib,
                                gpu_index=DESKTOP_GPU_INDEX, user="DWM-1" if n == 0 else "demo")
                     for n, (name, mib) in enumerate(shell))
    return (GpuProcess(pid=1_873, name="/usr/lib/xorg/Xorg", type="G", used_memory_mib=412,
                       gpu_index=DESKTOP_GPU_INDEX, user="root"),
            GpuProcess(pid=2_245, name="/usr/bin/gnome-shell", type="G", used_memory_mib=236,
                       gpu_index=DESKTOP_GPU_INDEX, user="gdm"))


def _model_rows(models: Sequence[DemoModelProcess]) -> tuple[GpuProcess, ...]:
    return tuple(GpuProcess(pid=model.pid, name=model.name, type="C", used_memory_mib=model.memory_mib, gpu_index=index)
                 for model in models for index in model.gpu_indexes if 0 <= index < len(DEMO_GPUS))


def _clear_of(taken: set[int], processes: Sequence[GpuProcess]) -> list[GpuProcess]:
    """The simulated processes, moved off the PIDs of the demo models (real processes: under Wine
    a model can be given the very PID the simulated shell has)."""
    moved, taken = [], set(taken)
    for process in processes:
        pid = process.pid
        while pid in taken:
            pid += 1
        taken.add(pid)
        moved.append(replace(process, pid=pid) if pid != process.pid else process)
    return moved


def _utilization(index: int, processes: Sequence[GpuProcess], training: bool, now_seconds: float) -> int:
    """Flat out under the training job, busy where a model serves, a little where only the desktop
    draws, drifting with time."""
    if training:
        return 94 + int(4 * math.sin(now_seconds / 7))
    if any(p.type == "C" for p in processes):
        return 38 + int(30 * abs(math.sin(now_seconds / 23 + index)))
    return 4 if processes else 0


def _reading(index: int, gpu: DemoGpu, processes: Sequence[GpuProcess], training: bool,
             now_seconds: float) -> GpuReading:
    utilization = _utilization(index, processes, training, now_seconds)
    used = DRIVER_MEMORY_MIB + sum(p.used_memory_mib or 0 for p in processes)
    return GpuReading(
        index=index, name=gpu.name, uuid=f"GPU-{index:08x}-dem0-4a11-8c0d-00000000000{index}",
        bus_id=f"00000000:{0x01 + 0x20 * index:02X}:00.0", memory_used_mib=min(used, gpu.memory_total_mib),
        memory_total_mib=gpu.memory_total_mib, utilization_percent=utilization,
        temperature_c=31 + utilization * 45 // 100,
        power_draw_w=round(gpu.power_idle_w + utilization / 100 * (gpu.power_limit_w - gpu.power_idle_w), 1),
        power_limit_w=gpu.power_limit_w, fan_percent=0 if utilization < 10 else 30 + utilization // 2)


def simulate(now: datetime, models: Sequence[DemoModelProcess], *, windows: bool,
             started_at: datetime | None = None) -> Snapshot:
    """The simulated machine at ``now``, with ``models`` (the demo models running) on their GPUs; the
    training job's cycle counts from ``started_at`` (default: ``now``, the job's start)."""
    now_seconds = now.timestamp()
    foreign = foreign_process(now_seconds - (started_at or now).timestamp(), windows=windows)
    others = _clear_of({model.pid for model in models}, [*([foreign] if foreign else []),
                                                          *desktop_processes(windows=windows)])
    processes = (*_model_rows(models), *others)
    gpus = tuple(_reading(index, gpu, [p for p in processes if p.gpu_index == index],
                          foreign is not None and index == FOREIGN_GPU_INDEX, now_seconds)
                 for index, gpu in enumerate(DEMO_GPUS))
    return Snapshot(taken_at=now, source=DESCRIPTION, gpus=gpus, processes=processes, driver_version="demo")
