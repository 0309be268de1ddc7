"""People: who acts (:class:`Actor`), what they may do, their credentials, and the audit trail's entries.

Pure apart from hashing: no database, no web. The state database keeps accounts
(:mod:`gpuwarden.store`), :mod:`gpuwarden.accounts` runs the use cases, and the web layer and the
CLI decide who the :class:`Actor` of a request is.

Rules (README, "Security"): with ``auth = "none"`` (loopback only) everyone acts on everything;
with ``auth = "password"`` only a model's owner or an admin may unload it, and only admins change
settings or accounts.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import re
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from gpuwarden.errors import ControllerError, LaunchFailed, StateUnavailable

if TYPE_CHECKING:
    from argon2 import PasswordHasher

USER_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
PASSWORD_MIN_CHARS = 8
PASSWORD_MAX_CHARS = 1024  # argon2 hashes any length; a cap keeps a request from feeding it megabytes
TOKEN_PREFIX = "gwt_"  # noqa: S105 - a prefix, not a secret
ANONYMOUS = "anonymous"


class AuthMode(enum.StrEnum):
    """The ``auth`` setting."""

    NONE = "none"  # no accounts: allowed only on loopback; every local account acts on every model
    PASSWORD = "password"  # noqa: S105 - a mode's name; accounts with passwords, sessions and API tokens


class Channel(enum.StrEnum):
    """How a request reached gpuwarden."""

    WEB = "web"  # the dashboard, or the REST API
    CLI = "cli"  # the command line, acting on the state database itself
    SYSTEM = "system"  # gpuwarden itself: supervision, start-up


@dataclass(frozen=True)
class Actor:
    """Who asks. ``name`` is an account name (``auth = "password"``), the OS account (the CLI), or
    None for an anonymous web caller (``auth = "none"``). ``client`` is the address they came from."""

    name: str | None
    admin: bool
    channel: Channel
    client: str | None = None

    @property
    def label(self) -> str:
        return self.name or ANONYMOUS

    @classmethod
    def system(cls) -> Actor:
        return cls("gpuwarden", admin=True, channel=Channel.SYSTEM)


def may_unload(actor: Actor, owner: str | None, mode: AuthMode) -> bool:
    """Only the owner or an admin stops a model, where there are accounts."""
    return mode is AuthMode.NONE or actor.admin or (actor.name is not None and actor.name == owner)


def may_administer(actor: Actor, mode: AuthMode) -> bool:
    """Settings and accounts: admins only, where there are accounts."""
    return mode is AuthMode.NONE or actor.admin


def user_name_problem(name: str) -> str | None:
    if USER_NAME_PATTERN.match(name):
        return None
    return (f"invalid user name {name[:70]!r}: 1 to 64 letters, digits or . _ @ -, starting with a letter or digit")


def password_problem(password: str) -> str | None:
    if len(password) < PASSWORD_MIN_CHARS:
        return f"a password needs at least {PASSWORD_MIN_CHARS} characters"
    if len(password) > PASSWORD_MAX_CHARS:
        return f"a password has at most {PASSWORD_MAX_CHARS} characters"
    return None


# ----------------------------------------------------------------- credentials

@functools.cache
def _hasher() -> PasswordHasher:
    """argon2id with the library's recommended parameters (RFC 9106); imported on first use, so
    commands that check no password do not pay for it."""
    from argon2 import PasswordHasher

    return PasswordHasher()


@functools.cache
def _dummy_hash() -> str:
    """Verified against when an account does not exist (made on first use: hashing takes a while)."""
    return _hasher().hash(secrets.token_urlsafe(16))


def hash_password(password: str) -> str:
    return _hasher().hash(password)


def password_matches(stored_hash: str | None, password: str) -> bool:
    """Constant work whether or not the account exists (``stored_hash`` None), so a login's timing
    does not tell which names are accounts."""
    from argon2.exceptions import InvalidHashError, VerificationError

    try:
        return _hasher().verify(stored_hash or _dummy_hash(), password[:PASSWORD_MAX_CHARS]) and stored_hash is not None
    except (VerificationError, InvalidHashError):
        return False


def password_needs_rehash(stored_hash: str) -> bool:
    from argon2.exceptions import InvalidHashError

    try:
        return _hasher().check_needs_rehash(stored_hash)
    except (InvalidHashError, ValueError):
        return False


def new_secret_token(prefix: str = TOKEN_PREFIX) -> str:
    """A new random token (256 bits): shown once, kept only as its digest."""
    return prefix + secrets.token_urlsafe(32)


def token_digest(token: str) -> str:
    """What the database keeps of a token. Tokens are random, so a fast hash suffices (as GitHub's)."""
    return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()


# ----------------------------------------------------------------- login throttle


@dataclass
class LoginThrottle:
    """Login attempts per key (an account name, a client address) in a sliding window. An attempt
    counts as a failure from the moment it begins (so a burst of concurrent guesses is limited like
    a sequence) until it succeeds. Past ``max_failures`` a key waits until its oldest failure leaves
    the window. Thread-safe."""

    max_failures: int = 5
    window_seconds: float = 300.0
    clock: Callable[[], float] = time.monotonic
    _failures: dict[str, deque[float]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def retry_after_seconds(self, *keys: str) -> float | None:
        """None if every key may try now; else how long the most limited one must wait."""
        now = self.clock()
        with self._lock:
            return self._longest_wait(keys, now)

    def begin(self, *keys: str) -> float | None:
        """Check and count an attempt in one step: None if it may go on (it is counted as a failure
        until :meth:`succeeded`), else how long to wait (nothing is counted)."""
        now = self.clock()
        with self._lock:
            wait = self._longest_wait(keys, now)
            if wait is not None:
                return wait
            for key in keys:
                self._failures.setdefault(key, deque()).append(now)
            if len(self._failures) > 10_000:  # many distinct keys: forget those with nothing recent
                for key in [k for k, v in self._failures.items() if not v or now - v[-1] > self.window_seconds]:
                    del self._failures[key]
        return None

    def succeeded(self, account_key: str, *other_keys: str) -> None:
        """The attempt begun was right: the account starts afresh; the other keys (the address) only
        lose this attempt, so logging in to one's own account does not reset guesses at others'."""
        with self._lock:
            self._failures.pop(account_key, None)
            for key in other_keys:
                recent = self._failures.get(key)
                if recent:
                    recent.pop()

    def _longest_wait(self, keys: tuple[str, ...], now: float) -> float | None:
        waits = [wait for wait in (self._wait(key, now) for key in keys) if wait is not None]
        return max(waits) if waits else None

    def _wait(self, key: str, now: float) -> float | None:
        recent = self._failures.get(key)
        if not recent:
            return None
        while recent and now - recent[0] >= self.window_seconds:
            recent.popleft()
        if len(recent) < self.max_failures:
            return None
        return self.window_seconds - (now - recent[-self.max_failures])


# ----------------------------------------------------------------- records


@dataclass(frozen=True)
class UserRecord:
    name: str
    admin: bool
    created_at: datetime
    password_hash: str = field(repr=False)
    token_count: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "admin": self.admin, "created_at": self.created_at.isoformat(),
                "tokens": self.token_count}


class AuditAction(enum.StrEnum):
    LOAD = "load"
    UNLOAD = "unload"
    CRASH = "crash"  # a model ended by itself
    FAILURE = "failure"  # a model failed to start (health check, launch)
    SETTINGS = "settings"
    LOGIN = "login"
    LOGOUT = "logout"
    USER_ADD = "user-add"
    USER_REMOVE = "user-remove"
    USER_PASSWORD = "user-password"  # noqa: S105 - an action\'s name
    TOKEN_CREATE = "token-create"  # noqa: S105 - an action\'s name
    TOKEN_REVOKE = "token-revoke"  # noqa: S105 - an action\'s name
    DENIED = "denied"  # a request refused before any action: not logged in, cross-site
    QUEUE = "queue"  # a load joined the queue for busy GPUs (its start is audited as a load)
    QUEUE_END = "queue-end"  # a queued load left the queue without starting: expired, withdrawn, failed


class AuditResult(enum.StrEnum):
    OK = "ok"
    REFUSED = "refused"  # not allowed or not safe: nothing was done
    FAILED = "failed"  # tried and failed


def audit_result(error: ControllerError) -> AuditResult:
    """Refused (not allowed, not safe, not understood: nothing was tried) or failed (tried)."""
    return AuditResult.FAILED if isinstance(error, (LaunchFailed, StateUnavailable)) else AuditResult.REFUSED


@dataclass(frozen=True)
class AuditEntry:
    """One line of the audit trail. ``at`` is filled in when it is written, if not given."""

    action: AuditAction
    result: AuditResult
    user: str | None = None
    client: str | None = None
    model: str | None = None
    gpus: tuple[int, ...] | None = None  # () is the CPU
    detail: str | None = None
    at: datetime | None = None
    id: int | None = None

    @classmethod
    def by(cls, actor: Actor, action: AuditAction, result: AuditResult, **fields: Any) -> AuditEntry:
        client = actor.client or actor.channel.value
        return cls(action, result, user=actor.label, client=client, **fields)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "at": self.at.isoformat() if self.at else None, "user": self.user,
                "client": self.client, "action": self.action.value, "model": self.model,
                "gpus": None if self.gpus is None else list(self.gpus), "result": self.result.value,
                "detail": self.detail}
