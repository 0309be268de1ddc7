"""``gpuwarden serve``: the app under uvicorn."""

from __future__ import annotations

import uvicorn

from gpuwarden.config import Settings
from gpuwarden.controller import build_controller
from gpuwarden.web.app import create_app


def run_server(settings: Settings) -> None:
    controller = build_controller(settings)
    app = create_app(controller)
    print(f"gpuwarden: dashboard on http://{settings.host}:{settings.port}/  (state: {settings.state_dir})",
          flush=True)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="warning")
