"""The errors a use case reports to whoever asked: a person at the CLI, the dashboard or an API
client. Each message is a sentence that says why. They carry no transport details: the web layer
maps them to HTTP status codes, the CLI to exit codes.
"""

from __future__ import annotations


class ControllerError(Exception):
    """A request could not be carried out; the message says why."""


class UnknownModel(ControllerError):
    """No model of that name is configured."""


class BadSelection(ControllerError):
    """The GPU selection cannot be understood, or names GPUs that do not exist."""


class LoadRefused(ControllerError):
    """The load is not safe now (a GPU is busy, the model already runs)."""


class GpusBusy(LoadRefused):
    """The GPUs asked for are busy (someone else's, another model, unreadable, promised to the
    queue): a load that may wait joins the queue instead."""


class UnknownWaitRequest(ControllerError):
    """No queued load has that id."""


class NotWaiting(ControllerError):
    """The queued load is no longer waiting (it started, expired or was withdrawn)."""


class NotLoaded(ControllerError):
    """The model is not loaded, so there is nothing to unload."""


class StateUnavailable(ControllerError):
    """The state database cannot be used (corrupt, locked, unwritable)."""


class InvalidSetting(ControllerError):
    """A run-time setting is unknown or out of its range."""


class LaunchFailed(ControllerError):
    """The model's command could not be started; nothing was left running."""


class NotPermitted(ControllerError):
    """The caller may not do this (another person's model, an admin-only change); nothing was done."""


class NotAuthenticated(ControllerError):
    """No valid login, session or API token."""


class TooManyAttempts(ControllerError):
    """Too many failed logins: wait ``retry_after_seconds``."""

    def __init__(self, message: str, retry_after_seconds: float = 60.0) -> None:
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds


class AccountProblem(ControllerError):
    """An account change cannot be made (no such user, a name taken, a weak password)."""
