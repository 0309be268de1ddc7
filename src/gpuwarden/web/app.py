"""``create_app(controller)``: the FastAPI application, built by a factory (no import-time globals).

A monitor thread runs beside the server: every second it reconciles the models (crashes, health
checks, changes made by the CLI), and every ``refresh_interval_seconds`` it refreshes GPU status;
after each pass it unloads idle models and starts queued loads whose GPUs became free.
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
from fastapi_offline import FastAPIOffline
from starlette.types import Scope

from gpuwarden import __version__
from gpuwarden.accounts import Accounts, build_accounts
from gpuwarden.config import ConfigError
from gpuwarden.controller import Controller
from gpuwarden.errors import (
    AccountProblem,
    BadSelection,
    ControllerError,
    InvalidSetting,
    LaunchFailed,
    LoadRefused,
    NotAuthenticated,
    NotLoaded,
    NotPermitted,
    NotWaiting,
    StateUnavailable,
    TooManyAttempts,
    UnknownModel,
    UnknownWaitRequest,
)
from gpuwarden.people import AuditAction, AuditEntry, AuditResult, AuthMode
from gpuwarden.probe.shared import Freshness
from gpuwarden.web import api, limits, login, metrics, pages, proxy
from gpuwarden.web.auth import SECRET_FILE, Authenticator, CookieSigner, client_address, load_secret, session_id
from gpuwarden.web.events import EventHub
from gpuwarden.web.guard import CrossSiteHook, RequestGuard, allowed_host_names, is_loopback, this_machine_names
from gpuwarden.web.lean import HotPaths
from gpuwarden.web.probing import ProbeWaiter
from gpuwarden.web.rendered import RenderedViews

MONITOR_INTERVAL_SECONDS = 1.0
AUDIT_PRUNE_INTERVAL_SECONDS = 3600.0
# Domain errors carry no HTTP codes; this is where they get them (most specific class first).
HTTP_STATUS_FOR_ERROR: tuple[tuple[type[ControllerError], int], ...] = (
    (UnknownModel, 404),
    (UnknownWaitRequest, 404),
    (NotAuthenticated, 401),
    (NotPermitted, 403),
    (TooManyAttempts, 429),
    (AccountProblem, 422),
    (BadSelection, 422),
    (LoadRefused, 409),
    (NotLoaded, 409),
    (NotWaiting, 409),
    (StateUnavailable, 503),
    (InvalidSetting, 422),
    (LaunchFailed, 500),
)


def http_status_for(error: ControllerError) -> int:
    return next((status for kind, status in HTTP_STATUS_FOR_ERROR if isinstance(error, kind)), 500)


class Monitor:
    """Background supervision for the server process."""

    def __init__(self, controller: Controller, accounts: Accounts | None = None,
                 interval_seconds: float = MONITOR_INTERVAL_SECONDS) -> None:
        self.controller = controller
        self.accounts = accounts
        self._last_prune = float("-inf")
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
                elif history_seconds := self.controller.settings.history_interval_seconds:
                    self.controller.snapshot(Freshness.within(history_seconds))  # one reading per interval
                if self.accounts is not None and time.monotonic() - self._last_prune >= AUDIT_PRUNE_INTERVAL_SECONDS:
                    self._last_prune = time.monotonic()
                    self.accounts.prune()
            except Exception as error:  # noqa: BLE001 - the monitor must outlive any one failure
                print(f"gpuwarden: monitor: {error!r}", flush=True)
            try:  # after the pass's reading; its own failure stops nothing else
                self.controller.unload_idle()
            except Exception as error:  # noqa: BLE001
                print(f"gpuwarden: monitor: idle models: {error!r}", flush=True)
            try:  # queued loads start within one reading of their GPUs becoming idle
                self.controller.advance_queue()
            except Exception as error:  # noqa: BLE001
                print(f"gpuwarden: monitor: queue: {error!r}", flush=True)


def create_app(controller: Controller, *, monitor: bool = True) -> FastAPI:
    settings = controller.settings
    if settings.auth is AuthMode.NONE and not is_loopback(settings.host):
        raise ConfigError(exposure_refusal(settings.host))
    accounts = build_accounts(settings, controller.store, controller.clock)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        watcher = Monitor(controller, accounts) if monitor else None
        if watcher is not None:
            watcher.start()
        try:
            yield
        finally:
            if watcher is not None:
                watcher.stop()
            if settings.stop_models_on_exit:
                controller.stop_all()
            await proxy.close_proxy_client(app.state)
            controller.store.close()  # reopened by whoever uses the store next

    app = FastAPIOffline(  # /docs and /redoc from files installed with gpuwarden: no CDN, works offline
        title="gpuwarden",
        version=__version__,
        description="Load models only onto GPUs nobody else is using.",
        lifespan=lifespan,
    )
    app.state.controller = controller
    app.state.rendered = rendered = RenderedViews(controller, accounts)
    app.state.metrics = metrics.registry_for(controller, rendered.renders)
    app.state.events = EventHub(controller.changes)
    app.state.accounts = accounts
    app.state.probe_waiter = ProbeWaiter(controller)
    app.state.signer = signer = CookieSigner(load_secret(settings.state_dir / SECRET_FILE))

    @app.exception_handler(ControllerError)
    async def controller_error(request: Request, error: ControllerError) -> JSONResponse:
        return JSONResponse(status_code=http_status_for(error), content={"detail": str(error)})

    app.add_exception_handler(RequestValidationError, limits.validation_error)
    # Outermost first: the Host and cross-site checks, then who is asking, then the body's size,
    # then the polled GETs answered before the router.
    app.add_middleware(HotPaths, endpoints={"/api/gpus": api.gpus, "/dashboard/refresh": pages.refresh})
    app.add_middleware(limits.BodyLimit, larger=((proxy.PROXY_PREFIX, proxy.MAX_PROXIED_BODY_BYTES),))
    app.add_middleware(Authenticator, accounts=accounts, signer=signer)
    interfaces = this_machine_names() if settings.host in ("0.0.0.0", "::") else ()  # noqa: S104
    app.add_middleware(RequestGuard, allowed_hosts=allowed_host_names(settings.host, settings.allowed_hosts,
                                                                      interfaces=interfaces),
                       on_cross_site=cross_site_auditor(accounts, signer))
    app.include_router(api.router)
    app.include_router(api.metrics_router)
    app.include_router(login.router)
    app.include_router(pages.router)
    app.include_router(proxy.router)
    app.mount("/static", StaticFiles(directory=Path(__file__).parent / "static"), name="static")
    return app


def cross_site_auditor(accounts: Accounts, signer: CookieSigner) -> CrossSiteHook:
    """Audits each refused cross-site request, naming whose live session it carried, if any: that
    person's browser was made to send it, and an admin can tell them."""

    def audit(scope: Scope, reason: str) -> None:
        client = client_address(scope)
        session = session_id(Request(scope), signer) if accounts.mode is AuthMode.PASSWORD else None
        victim = accounts.session_actor(session, client) if session is not None else None
        if victim is not None:
            reason += f", sent with {victim.name}'s session"
        accounts.record_denial(AuditEntry(AuditAction.DENIED, AuditResult.REFUSED, client=client,
                                          detail=f"{reason}: {scope.get('method')} {str(scope.get('path'))[:200]}"))

    return audit


def exposure_refusal(host: str) -> str:
    return (f"refusing to listen on {host} with auth = \"none\": anyone who can reach it could load and unload "
            "models. Add an admin (gpuwarden users add NAME --admin) and set auth = \"password\" in the config "
            "file (or GPUWARDEN_AUTH=password), or listen on 127.0.0.1 only.")
