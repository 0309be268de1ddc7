"""What the dashboard shows a viewer: one context for the page, its fragment and the actions' answers."""

from __future__ import annotations

from typing import Any

from gpuwarden import people
from gpuwarden.accounts import Accounts
from gpuwarden.classify import StatusDocument
from gpuwarden.controller import Controller
from gpuwarden.errors import StateUnavailable
from gpuwarden.people import Actor
from gpuwarden.queueing import QueueLine
from gpuwarden.records import ModelState, ModelView
from gpuwarden.runtime import RUNTIME_SETTING_RANGES

RECENT_ACTIVITY_ROWS = 12


def content_context(controller: Controller, accounts: Accounts, actor: Actor, status: StatusDocument | None = None,
                    *, flash: dict[str, str] | None = None, settings_flash: str | None = None) -> dict[str, Any]:
    """What the page and its fragments show to ``actor``: ``status`` (default: from the latest
    reading), the models with what the viewer may do to them, and the recent activity."""
    status = status or controller.status()
    models: list[ModelView] = []
    activity: list[people.AuditEntry] = []
    queue: list[QueueLine] = []
    state_error = None
    try:
        models = controller.models()
        queue = controller.queue_lines(status)
        activity = accounts.recent(RECENT_ACTIVITY_ROWS)
    except StateUnavailable as error:
        state_error = str(error)
    mode = controller.settings.auth
    return {
        "actor": actor,
        "accounts_on": mode is people.AuthMode.PASSWORD,
        "may_stop": lambda model: people.may_unload(actor, model.owner, mode),
        "may_withdraw": lambda entry: people.may_unload(actor, entry.owner, mode),
        "queue": queue,
        "queued": {line.entry.model_name: line for line in queue},
        "may_configure": people.may_administer(actor, mode),
        "activity": activity,
        "status": status,
        "history": controller.gpus.history,
        "rendered_at": controller.clock(),
        "models": models,
        "state_error": state_error,
        "flash": flash or {},
        "settings_flash": settings_flash,
        "interval": controller.runtime.refresh_interval_seconds,
        "threshold": status.threshold_mib,
        "idle_notice_seconds": controller.settings.idle_notice_minutes * 60,
        "wait_minutes": controller.settings.wait_timeout_minutes,
        "ranges": RUNTIME_SETTING_RANGES,
        "version": controller.changes.version,
        "starting": any(m.state in (ModelState.STARTING, ModelState.STOPPING) for m in models),
    }
