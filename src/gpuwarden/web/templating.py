"""The Jinja2 templates of the dashboard and the login page, with the helpers they call."""

from __future__ import annotations

from pathlib import Path

from fastapi.templating import Jinja2Templates

from gpuwarden import present
from gpuwarden.web import views

templates = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))
templates.env.globals.update(
    interval_label=present.interval_label, duration_label=present.duration_label,
    gpu_state_label=present.gpu_state_label, model_state_label=present.model_state_label,
    desktop_note=present.desktop_note, telemetry_text=present.telemetry_text,
    memory_segments=views.memory_segments, sparkline=views.sparkline, spark_span_seconds=views.spark_span_seconds,
    iso_time=present.iso_time, spark_size=(views.SPARK_WIDTH, views.SPARK_HEIGHT),
    buttons_for=views.buttons_for, not_yours=views.not_yours)
