"""Pure view-models for the dashboard: what each GPU button says, whether it is enabled, and why.

Kept out of the templates so the rules (seed §5, §6) are plain, tested Python.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from gpuwarden.classify import GpuStatus, StatusDocument
from gpuwarden.history import WINDOW_SECONDS, Sample
from gpuwarden.present import BOLT
from gpuwarden.queueing import QueueLine
from gpuwarden.records import GpuState, ModelView
from gpuwarden.waitlist import WaitEntry, claim_text, claims


@dataclass(frozen=True)
class MemorySegment:
    """One part of a GPU's memory bar: whose memory it is, and how much."""

    kind: str  # model | others | desktop | idle (memory nobody listed holds on an idle GPU)
    mib: int
    percent: float  # of the GPU's total
    title: str


def memory_segments(gpu: GpuStatus) -> list[MemorySegment]:
    """The memory bar: the models' share, someone else's, the desktop's. Memory no listed process
    accounts for (figures N/A under WDDM, another container) goes to whoever the state blames: someone
    else on an occupied GPU, the model on a loaded one."""
    used, total = gpu.memory_used_mib, gpu.memory_total_mib
    if used is None or not total:
        return []
    model_mib = sum(p.used_memory_mib or 0 for p in gpu.process_info if p.model_name)
    others_mib = sum(p.used_memory_mib or 0 for p in gpu.process_info if p.someone_elses)
    desktop_mib = min(gpu.desktop_memory_mib or 0, used)
    rest = max(0, used - model_mib - others_mib - desktop_mib)
    rest_kind = {GpuState.OCCUPIED_BY_OTHERS: "others", GpuState.MODEL_LOADED: "model"}.get(gpu.state, "idle")
    shares = {"model": model_mib, "others": others_mib, "desktop": desktop_mib, "idle": 0}
    shares[rest_kind] += rest
    titles = {"model": "gpuwarden's models", "others": "someone else", "desktop": "the desktop",
              "idle": "no listed process"}
    return [MemorySegment(kind, mib, round(min(100.0, 100.0 * mib / total), 2), f"{titles[kind]}: {mib} MiB")
            for kind, mib in shares.items() if mib > 0]


SPARK_WIDTH = 120
SPARK_HEIGHT = 28


MIN_SPARK_SPAN_SECONDS = 60


def spark_span_seconds(samples: tuple[Sample, ...]) -> float:
    """The time a sparkline spans: the readings kept (a server just started has minutes, not an
    hour), at least a minute, at most the hour."""
    if len(samples) < 2:
        return MIN_SPARK_SPAN_SECONDS
    span = (samples[-1].at - samples[0].at).total_seconds()
    return min(max(span, MIN_SPARK_SPAN_SECONDS), WINDOW_SECONDS)


def sparkline(samples: tuple[Sample, ...], field: str, maximum: float | None) -> str | None:
    """SVG polyline points for ``field`` (memory_used_mib or utilization_percent) over the readings
    kept (:func:`spark_span_seconds`), scaled to ``maximum``; None where fewer than two say anything."""
    points = [(s.at, getattr(s, field)) for s in samples if getattr(s, field) is not None]
    if len(points) < 2 or not maximum:
        return None
    newest, span_seconds = points[-1][0], spark_span_seconds(samples)
    coordinates = []
    for at, value in points:
        age_seconds = (newest - at).total_seconds()
        x = SPARK_WIDTH * (1 - min(age_seconds, span_seconds) / span_seconds)
        y = SPARK_HEIGHT * (1 - min(max(value / maximum, 0.0), 1.0))
        coordinates.append(f"{x:.1f},{y:.1f}")
    return " ".join(coordinates)


@dataclass(frozen=True)
class GpuButton:
    label: str
    gpu: str  # "0", "1", ... or "cpu"
    action: str  # "load" | "details" (the model's own GPU: its details; Unload is the one unload) | "none"
    disabled: bool
    title: str  # tooltip: what a click does, or why it is disabled
    css: str  # idle | mine | other-model | occupied | unavailable | busy-model | queued
    wait: bool = False  # offer "Wait for GPU N" beside it (a busy GPU, the model neither loaded nor waiting)


def not_yours(model: ModelView) -> str:
    """Why the viewer cannot unload ``model``."""
    owner = model.owner or "someone before accounts existed"
    return f"{model.name} was loaded by {owner}: only its owner or an admin can unload it"


def gpu_button(model: ModelView, gpu: GpuStatus, claim: WaitEntry | None = None, waiting: bool = False) -> GpuButton:
    """The button of ``gpu`` for ``model``; ``claim``: the load first in line for the GPU, if any;
    ``waiting``: the model itself waits in the queue already."""
    index = str(gpu.index)
    may_wait = not model.loaded and not waiting
    if gpu.state is GpuState.MODEL_LOADED and model.name in gpu.model_names and gpu.index in model.gpu_indexes:
        return GpuButton(f"{BOLT} GPU {index} ({model.name})", index, "details", False,
                         f"{model.name} runs on GPU {index} ({model.state.value}): click for its details", "mine")
    if gpu.state is GpuState.MODEL_LOADED:
        other = gpu.model_name or "another model"
        return GpuButton(f"{BOLT} GPU {index} ({other})", index, "none", True,
                         f"GPU {index} runs {other}: unload it first", "other-model", may_wait)
    if gpu.state is GpuState.OCCUPIED_BY_OTHERS:
        return GpuButton(f"GPU {index} (Occupied)", index, "none", True, gpu.reason, "occupied", may_wait)
    if gpu.state is GpuState.UNAVAILABLE:
        return GpuButton(f"GPU {index} (Unavailable)", index, "none", True, gpu.reason, "unavailable", may_wait)
    if claim is not None and not model.loaded:
        return GpuButton(f"GPU {index} (Queued)", index, "none", True, claim_text(gpu.index, claim), "queued",
                         may_wait)
    if model.loaded:
        where = f"GPU {','.join(map(str, model.gpu_indexes))}" if model.gpu_indexes else "the CPU"
        return GpuButton(f"GPU {index}", index, "none", True,
                         f"{model.name} is already loaded on {where}: unload it first", "busy-model")
    return GpuButton(f"GPU {index}", index, "load", False, f"Load {model.name} on GPU {index}", "idle")


def cpu_button(model: ModelView) -> GpuButton:
    if model.on_cpu:
        return GpuButton(f"{BOLT} CPU ({model.name})", "cpu", "details", False,
                         f"{model.name} runs on the CPU ({model.state.value}): click for its details", "mine")
    if model.loaded:
        return GpuButton("CPU", "cpu", "none", True, f"{model.name} is already loaded: unload it first", "busy-model")
    return GpuButton("CPU", "cpu", "load", False, f"Load {model.name} on the CPU", "idle")


def buttons_for(model: ModelView, status: StatusDocument, queue: Sequence[QueueLine] = ()) -> list[GpuButton]:
    """One button per detected GPU (GPU 0 .. GPU N-1), or one CPU button in CPU mode. Unreadable
    GPUs: the last known ones, disabled with the reason, and the CPU button. A model's own GPU
    opens its details; the model's Unload button is the one way to unload it. A busy GPU offers
    to wait for it; an idle one promised to the queue is disabled (``queue``: the waiting loads)."""
    if status.cpu_mode:
        return [cpu_button(model)]
    first_in_line = claims([line.entry for line in queue])
    waiting = any(line.entry.model_name == model.name for line in queue)
    buttons = [gpu_button(model, gpu, first_in_line.get(gpu.index), waiting) for gpu in status.gpus]
    if status.unreadable:
        buttons.append(cpu_button(model))
    return buttons
