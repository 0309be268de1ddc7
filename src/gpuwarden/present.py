"""Pure: how states, durations and untrusted text are shown to people, by the CLI and the dashboard
alike. One table of state labels; the terminal and the page differ only in case and decoration."""

from __future__ import annotations

from datetime import UTC, datetime

from gpuwarden.classify import GpuStatus
from gpuwarden.records import GpuState, ModelState

BOLT = "\u26a1"
GPU_STATE_LABELS: dict[GpuState, str] = {
    GpuState.IDLE: "Idle",
    GpuState.MODEL_LOADED: "Model loaded",
    GpuState.OCCUPIED_BY_OTHERS: "Occupied by someone else",
    GpuState.UNAVAILABLE: "Unavailable",
}
# What a terminal table adds where the short label alone would puzzle.
GPU_STATE_HINTS: dict[GpuState, str] = {GpuState.UNAVAILABLE: "memory unreadable"}


def gpu_state_label(gpu: GpuStatus, *, for_terminal: bool = False) -> str:
    """Page: 'Idle', '⚡ Model loaded: llama-7b', ... Terminal: 'idle', 'model loaded: llama-7b',
    'unavailable (memory unreadable)', ..."""
    label = GPU_STATE_LABELS[gpu.state]
    if gpu.state is GpuState.MODEL_LOADED:
        label = f"{label}: {gpu.model_name}"
    if not for_terminal:
        return f"{BOLT} {label}" if gpu.state is GpuState.MODEL_LOADED else label
    label = label[0].lower() + label[1:]
    hint = GPU_STATE_HINTS.get(gpu.state)
    if gpu.desktop_memory_mib is not None and gpu.state is not GpuState.OCCUPIED_BY_OTHERS:
        hint = ", ".join(part for part in (hint, desktop_note(gpu.desktop_memory_mib)) if part)
    return f"{label} ({hint})" if hint else label


def desktop_note(desktop_memory_mib: int) -> str:
    """'desktop: 665 MiB': what the desktop's processes hold, not counted as use."""
    return f"desktop: {desktop_memory_mib} MiB"


def process_role(model_name: str | None, desktop: bool) -> str:
    """Whose a GPU process is: 'model NAME', 'desktop' or 'foreign'."""
    if model_name:
        return f"model {model_name}"
    return "desktop" if desktop else "foreign"


def model_state_label(state: ModelState) -> str:
    """'not loaded', 'starting', 'running', 'stopping', 'failed'. A model that was stopped and one never
    loaded are in the same situation for a person: both are 'not loaded'."""
    if state is ModelState.STOPPED:
        state = ModelState.NOT_LOADED
    return state.value.replace("_", " ")


def iso_time(moment: datetime) -> str:
    """'2026-11-27T10:00:00Z': a UTC time that browsers and people read alike."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def telemetry_text(gpu: GpuStatus) -> str:
    """'45% util · 62 °C · 180 / 450 W · fan 52%', with what the GPU reports ('' where nothing)."""
    parts = []
    if gpu.utilization_percent is not None:
        parts.append(f"{gpu.utilization_percent}% util")
    if gpu.temperature_c is not None:
        parts.append(f"{gpu.temperature_c} \u00b0C")
    if gpu.power_draw_w is not None:
        limit = f" / {gpu.power_limit_w:.0f}" if gpu.power_limit_w is not None else ""
        parts.append(f"{gpu.power_draw_w:.0f}{limit} W")
    if gpu.fan_percent is not None:
        parts.append(f"fan {gpu.fan_percent}%")
    return " \u00b7 ".join(parts)


def terminal_safe(text: str | None) -> str:
    """Untrusted text (process names) for a terminal: no control characters or escape sequences."""
    if text is None:
        return "-"
    return "".join(ch if ch.isprintable() else "?" for ch in text)


def _hours_minutes_seconds(seconds: float) -> tuple[int, int, int]:
    hours, rest = divmod(int(seconds), 3600)
    minutes, secs = divmod(rest, 60)
    return hours, minutes, secs


def duration_compact(seconds: float) -> str:
    """For tables: 65 -> '1m05s', 3725 -> '1h02m'."""
    hours, minutes, secs = _hours_minutes_seconds(seconds)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def duration_label(seconds: float | None) -> str:
    """For the page: None -> '', 5 -> '5s', 65 -> '1m 05s', 3725 -> '1h 02m'."""
    if seconds is None:
        return ""
    hours, minutes, secs = _hours_minutes_seconds(seconds)
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


def interval_label(seconds: int) -> str:
    """300 -> '5m', 90 -> '90s', 3600 -> '1h'."""
    if seconds % 3600 == 0:
        return f"{seconds // 3600}h"
    if seconds % 60 == 0:
        return f"{seconds // 60}m"
    return f"{seconds}s"
