"""``create_app(controller)``: the FastAPI application, built by a factory (no import-time globals).

A monitor thread runs beside the server: every second it reconciles the models (crashes, health
checks, changes made by the CLI), and every ``refresh_interval_seconds`` it refreshes GPU status.
"""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.middleware.trustedhost import TrustedHostMiddleware

from gpuwarden import __version__
from gpuwarden.controller import Controller
from gpuwarden.errors import (
    BadSelection,
    ControllerError,
    InvalidSetting,
    LaunchFailed,
    LoadRefused,
    NotLoaded,
    StateUnavailable,
    UnknownModel,
)
from gpuwarden.probe.shared import Freshness
from gpuwarden.web import api, limits, pages
from gpuwarden.web.probing import ProbeWaiter

MONITOR_INTERVAL_SECONDS = 1.0
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")
# Domain errors carry no HTTP codes; this is where they get them (most specific class first).
HTTP_STATUS_FOR_ERROR: tuple[tuple[type[ControllerError], int], ...] = (
    (UnknownModel, 404),
    (BadSelection, 422),
    (LoadRefused, 409),
    (NotLoaded, 409),
    (StateUnavailable, 503),
    (InvalidSetting, 422),
    (LaunchFailed, 500),
)


def http_status_for(error: ControllerError) -> int:
    return next((status for kind, status in HTTP_STATUS_FOR_ERROR if isinstance(error, kind)), 500)


class Monitor:
    """Background supervision for the server process."""

    def __init__(self, controller: Controller, interval_seconds: float = MONITOR_INTERVAL_SECONDS) -> None:
        self.controller = controller
        self.interval_seconds = interval_seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="gpuwarden-monitor", daemon=True)
        self._last_refresh = 0.0

    def start(self) -> None:
        self.controller.reconcile(at_startup=True)
        self.controller.snapshot(Freshness.NOW)
        self._last_refresh = time.monotonic()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_seconds):
            try:
                self.controller.reconcile()
                if time.monotonic() - self._last_refresh >= self.controller.runtime.refresh_interval_seconds:
                    self._last_refresh = time.monotonic()
                    self.controller.snapshot(Freshness.NOW)
            except Exception as error:  # noqa: BLE001 - the monitor must outlive any one failure
                print(f"gpuwarden: monitor: {error!r}", flush=True)


def create_app(controller: Controller, *, monitor: bool = True) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        watcher = Monitor(controller) if monitor else None
        if watcher is not None:
            watcher.start()
        try:
            yield
        finally:
            if watcher is not None:
                watcher.stop()
            if controller.settings.stop_models_on_exit:
                controller.stop_all()

    app = FastAPI(
        title="gpuwarden",
        version=__version__,
        description="Load models only onto GPUs nobody else is using.",
        lifespan=lifespan,
    )
    app.state.controller = controller
    app.state.probe_waiter = ProbeWaiter(controller)

    @app.exception_handler(ControllerError)
    async def controller_error(request: Request, error: ControllerError) -> JSONResponse:
        return JSONResponse(status_code=http_status_for(error), content={"detail": str(error)})

    if controller.settings.host in LOOPBACK_NAMES:
        # Served on loopback only: refuse other Host names, so a web page that rebinds its own DNS
        # name to 127.0.0.1 cannot drive gpuwarden from the user's browser.
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(LOOPBACK_NAMES))
    app.add_exception_handler(RequestValidationError, limits.validation_error)
    app.add_middleware(limits.BodyLimit)
    app.include_router(api.router)
    app.include_router(pages.router)
    app.mount("/static", StaticFiles(directory=Path(__file__).parent / "static"), name="static")
    return app
