"""Pure view-models for the dashboard: what each GPU button says, whether it is enabled, and why.

Kept out of the templates so the rules (seed §5, §6) are plain, tested Python.
"""

from __future__ import annotations

from dataclasses import dataclass

from gpuwarden.classify import GpuStatus, StatusDocument
from gpuwarden.present import BOLT
from gpuwarden.records import GpuState, ModelView


@dataclass(frozen=True)
class GpuButton:
    label: str
    gpu: str  # "0", "1", ... or "cpu"
    action: str  # "load" | "unload" | "none"
    disabled: bool
    title: str  # tooltip: what a click does, or why it is disabled
    css: str  # idle | mine | other-model | occupied | unavailable | busy-model


def not_yours(model: ModelView) -> str:
    """Why the viewer cannot unload ``model``."""
    owner = model.owner or "someone before accounts existed"
    return f"{model.name} was loaded by {owner}: only its owner or an admin can unload it"


def gpu_button(model: ModelView, gpu: GpuStatus, may_stop: bool = True) -> GpuButton:
    index = str(gpu.index)
    if gpu.state is GpuState.MODEL_LOADED and model.name in gpu.model_names and gpu.index in model.gpu_indexes:
        if not may_stop:
            return GpuButton(f"{BOLT} GPU {index} ({model.name})", index, "none", True, not_yours(model), "mine")
        return GpuButton(f"{BOLT} GPU {index} ({model.name})", index, "unload", False,
                         f"{model.name} runs on GPU {index} ({model.state.value}): click to unload it", "mine")
    if gpu.state is GpuState.MODEL_LOADED:
        other = gpu.model_name or "another model"
        return GpuButton(f"{BOLT} GPU {index} ({other})", index, "none", True,
                         f"GPU {index} runs {other}: unload it first", "other-model")
    if gpu.state is GpuState.OCCUPIED_BY_OTHERS:
        return GpuButton(f"GPU {index} (Occupied)", index, "none", True, gpu.reason, "occupied")
    if gpu.state is GpuState.UNAVAILABLE:
        return GpuButton(f"GPU {index} (Unavailable)", index, "none", True, gpu.reason, "unavailable")
    if model.loaded:
        where = f"GPU {','.join(map(str, model.gpu_indexes))}" if model.gpu_indexes else "the CPU"
        return GpuButton(f"GPU {index}", index, "none", True,
                         f"{model.name} is already loaded on {where}: unload it first", "busy-model")
    return GpuButton(f"GPU {index}", index, "load", False, f"Load {model.name} on GPU {index}", "idle")


def cpu_button(model: ModelView, may_stop: bool = True) -> GpuButton:
    if model.on_cpu and not may_stop:
        return GpuButton(f"{BOLT} CPU ({model.name})", "cpu", "none", True, not_yours(model), "mine")
    if model.on_cpu:
        return GpuButton(f"{BOLT} CPU ({model.name})", "cpu", "unload", False,
                         f"{model.name} runs on the CPU ({model.state.value}): click to unload it", "mine")
    if model.loaded:
        return GpuButton("CPU", "cpu", "none", True, f"{model.name} is already loaded: unload it first", "busy-model")
    return GpuButton("CPU", "cpu", "load", False, f"Load {model.name} on the CPU", "idle")


def buttons_for(model: ModelView, status: StatusDocument, may_stop: bool = True) -> list[GpuButton]:
    """One button per detected GPU (GPU 0 .. GPU N-1), or one CPU button in CPU mode. Unreadable
    GPUs: the last known ones, disabled with the reason, and the CPU button. A model the viewer
    may not stop (``may_stop`` False) shows its GPUs without the unload action."""
    if status.cpu_mode:
        return [cpu_button(model, may_stop)]
    buttons = [gpu_button(model, gpu, may_stop) for gpu in status.gpus]
    if status.unreadable:
        buttons.append(cpu_button(model, may_stop))
    return buttons
