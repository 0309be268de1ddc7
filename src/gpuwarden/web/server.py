"""``gpuwarden serve``: the app under uvicorn, after the checks that keep it from being exposed
unprotected."""

from __future__ import annotations

from typing import Any

import uvicorn

from gpuwarden.accounts import build_accounts
from gpuwarden.config import ConfigError, Settings
from gpuwarden.controller import build_controller
from gpuwarden.errors import StateUnavailable
from gpuwarden.people import AuthMode
from gpuwarden.process.jobs import JobStanding, own_standing
from gpuwarden.web.app import create_app, exposure_refusal
from gpuwarden.web.assets import AssetMissing, check_assets
from gpuwarden.web.guard import is_loopback

GRACEFUL_SHUTDOWN_SECONDS = 3
OPEN_ON_LOOPBACK = ("auth = \"none\": every account on this machine can load and unload every model through"
                    " gpuwarden. For accounts: gpuwarden users add NAME --admin, then auth = \"password\".")


def start_notes(settings: Settings, standing: JobStanding | None = None) -> list[str]:
    """What ``serve`` must say before it listens; ConfigError if it must not listen at all.
    ``standing``: the Windows job gpuwarden runs in (read here when not given)."""
    containment = (standing or own_standing()).note()
    notes = [containment] if containment else []
    if settings.auth is AuthMode.NONE:
        if not is_loopback(settings.host):
            raise ConfigError(exposure_refusal(settings.host))
        return [*notes, OPEN_ON_LOOPBACK]
    try:
        accounts = build_accounts(settings).users()
    except StateUnavailable as error:
        raise ConfigError(f"cannot read the accounts: {error}") from None
    if not any(user.admin for user in accounts):
        raise ConfigError("auth = \"password\" but no admin account exists, so nobody could sign in and manage"
                          " gpuwarden: add one with gpuwarden users add NAME --admin")
    return notes


def run_server(settings: Settings) -> None:
    try:
        check_assets()
    except AssetMissing as error:
        raise ConfigError(str(error)) from None
    for note in start_notes(settings):
        print(f"gpuwarden: {note}", flush=True)
    controller = build_controller(settings)
    app = create_app(controller)
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    print(f"gpuwarden: open http://{host}:{settings.port}/ in a browser (state: {settings.state_dir});"
          " press Ctrl+C to stop", flush=True)
    # Open dashboards hold /events streams: a stop waits for them at most this long, then ends them, so
    # the shutdown (and stop_models_on_exit) always runs.
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="warning", access_log=False,
                timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS, **proxy_options(settings))


def proxy_options(settings: Settings) -> dict[str, Any]:
    """Forwarded headers (client address, https) are believed from ``trusted_proxies`` only: from
    any other caller, even a local one, they would forge addresses in the audit trail."""
    if not settings.trusted_proxies:
        return {"proxy_headers": False}
    return {"proxy_headers": True, "forwarded_allow_ips": ",".join(settings.trusted_proxies)}
