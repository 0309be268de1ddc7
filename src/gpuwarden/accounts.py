"""Use cases for people: accounts, API tokens, logins and sessions, and the audit trail.

The server and the CLI share them through the state database. Every change is audited in the
transaction that makes it. Secrets are handled here only as far as hashing them: the web layer
signs the session cookie, the CLI reads passwords without echo.
"""

from __future__ import annotations

import contextlib
import secrets
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from gpuwarden import people
from gpuwarden.config import Settings
from gpuwarden.errors import AccountProblem, NotAuthenticated, NotPermitted, StateUnavailable, TooManyAttempts
from gpuwarden.people import Actor, AuditAction, AuditEntry, AuditResult, AuthMode, Channel, UserRecord
from gpuwarden.probe.base import utc_now
from gpuwarden.store import STATE_DATABASE, Store, StoreError, StoreTx

MAX_AUDIT_ROWS = 100_000  # whatever the retention, a flood of refused requests cannot fill the disk
DENIALS_PER_MINUTE = 60


@dataclass
class _DenialCount:
    minute: int = 0
    recorded: int = 0
    unrecorded: int = 0


@dataclass(frozen=True)
class Login:
    """A successful login: who, and the session id for the cookie (shown to this client only)."""

    user: UserRecord
    session_id: str


class Accounts:
    """Accounts and the audit trail on one state database. Thread-safe."""

    def __init__(self, store: Store, mode: AuthMode, clock: Callable[[], datetime], *,
                 session_lifetime_hours: float = 168.0, audit_retention_days: int = 365) -> None:
        self.store = store
        self.mode = mode
        self.clock = clock
        self.session_lifetime = timedelta(hours=session_lifetime_hours)
        self.audit_retention = timedelta(days=audit_retention_days)
        self.throttle = people.LoginThrottle()
        self._denials_lock = threading.Lock()
        self._denials: dict[AuditAction, _DenialCount] = {}

    @contextlib.contextmanager
    def _write(self) -> Iterator[StoreTx]:
        """An exclusive transaction; a database that cannot be used is StateUnavailable."""
        try:
            with self.store.exclusive() as tx:
                yield tx
        except StoreError as error:
            raise StateUnavailable(str(error)) from None

    @contextlib.contextmanager
    def _read(self) -> Iterator[StoreTx]:
        try:
            with self.store.read() as tx:
                yield tx
        except StoreError as error:
            raise StateUnavailable(str(error)) from None

    # ------------------------------------------------------------- the audit trail

    def record(self, entry: AuditEntry) -> None:
        """Write an audit entry on its own (a refusal, whose action wrote nothing). Never fails the caller."""
        self.store.record_audit(entry, self.clock())

    def record_denial(self, entry: AuditEntry) -> None:
        """A refusal anyone can cause without an account (a failed login, a request refused at the
        door): audited, but at most DENIALS_PER_MINUTE entries a minute per action, the rest counted
        in the next one, so that nobody can flood the trail and push its history out."""
        minute = int(self.clock().timestamp() // 60)
        with self._denials_lock:
            count = self._denials.setdefault(entry.action, _DenialCount())
            if minute != count.minute:
                count.minute, count.recorded = minute, 0
            if count.recorded >= DENIALS_PER_MINUTE:
                count.unrecorded += 1
                return
            count.recorded += 1
            unrecorded, count.unrecorded = count.unrecorded, 0
        if unrecorded:
            entry = replace(entry, detail=f"{entry.detail} (and {unrecorded} similar refusals not recorded singly)")
        self.record(entry)

    def recent(self, limit: int = 100) -> list[AuditEntry]:
        with self._read() as tx:
            return tx.audit(max(1, min(limit, 1000)))

    def prune(self, keep_at_most: int = MAX_AUDIT_ROWS) -> int:
        """Delete audit entries past the retention, and beyond ``keep_at_most`` (refusals first)."""
        with self._write() as tx:
            return tx.prune_audit(older_than=self.clock() - self.audit_retention, keep_at_most=keep_at_most)

    # ------------------------------------------------------------- accounts (admins)

    def users(self) -> list[UserRecord]:
        with self._read() as tx:
            return tx.users()

    @contextlib.contextmanager
    def _administering(self, actor: Actor, action: AuditAction, subject: str) -> Iterator[None]:
        """An account change by ``actor``: admins only; a refusal (not allowed, no such user, a weak
        password, ...) is audited with its reason."""
        try:
            if not people.may_administer(actor, AuthMode.PASSWORD):
                raise NotPermitted("only an admin can change accounts")
            yield
        except (NotPermitted, AccountProblem) as error:
            self.record(AuditEntry.by(actor, action, AuditResult.REFUSED, detail=f"{subject[:80]}: {error}"))
            raise

    def add_user(self, actor: Actor, name: str, password: str, *, admin: bool) -> UserRecord:
        with self._administering(actor, AuditAction.USER_ADD, f"add {name[:64]}"):
            problem = people.user_name_problem(name) or people.password_problem(password)
            if problem:
                raise AccountProblem(problem)
            password_hash = people.hash_password(password)
            with self._write() as tx:
                if tx.user(name) is not None:
                    raise AccountProblem(f"user {name} already exists (change the password with "
                                         f"`gpuwarden users passwd {name}`)")
                tx.add_user(name, password_hash, admin=admin, at=self.clock())
                tx.add_audit(AuditEntry.by(actor, AuditAction.USER_ADD, AuditResult.OK,
                                           detail=f"{name}{' (admin)' if admin else ''}"), at=self.clock())
                added = tx.user(name)
            assert added is not None
            return added

    def remove_user(self, actor: Actor, name: str) -> None:
        """Remove an account, its tokens and its sessions. The last admin stays while others remain."""
        with self._administering(actor, AuditAction.USER_REMOVE, f"remove {name[:64]}"), self._write() as tx:
            users = tx.users()
            user = next((u for u in users if u.name == name), None)
            if user is None:
                raise AccountProblem(f"no user {name[:64]!r}")
            if user.admin and len(users) > 1 and sum(u.admin for u in users) == 1:
                raise AccountProblem(f"{name} is the last admin: make another admin first")
            tx.remove_user(name)
            withdrawn = tx.withdraw_waits_of(name, at=self.clock(), detail=f"account {name} removed")
            tx.add_audit(AuditEntry.by(actor, AuditAction.USER_REMOVE, AuditResult.OK,
                                       detail=f"{name}; {withdrawn} waiting load(s) withdrawn" if withdrawn else name),
                         at=self.clock())

    def set_password(self, actor: Actor, name: str, password: str) -> None:
        """A new password; the account's sessions end (its API tokens stay)."""
        with self._administering(actor, AuditAction.USER_PASSWORD, f"password of {name[:64]}"):
            problem = people.password_problem(password)
            if problem:
                raise AccountProblem(problem)
            password_hash = people.hash_password(password)
            with self._write() as tx:
                if not tx.set_password(name, password_hash):
                    raise AccountProblem(f"no user {name[:64]!r}")
                ended = tx.end_sessions(name)
                tx.add_audit(AuditEntry.by(actor, AuditAction.USER_PASSWORD, AuditResult.OK,
                                           detail=f"{name}; {ended} session(s) ended"), at=self.clock())

    def new_token(self, actor: Actor, name: str) -> str:
        """A new API token for ``name``: returned once, kept only as its digest."""
        with self._administering(actor, AuditAction.TOKEN_CREATE, f"token for {name[:64]}"):
            token = people.new_secret_token()
            with self._write() as tx:
                if tx.user(name) is None:
                    raise AccountProblem(f"no user {name[:64]!r}")
                tx.add_token(name, people.token_digest(token), at=self.clock())
                tx.add_audit(AuditEntry.by(actor, AuditAction.TOKEN_CREATE, AuditResult.OK, detail=name),
                             at=self.clock())
            return token

    def revoke_tokens(self, actor: Actor, name: str) -> int:
        with self._administering(actor, AuditAction.TOKEN_REVOKE, f"tokens of {name[:64]}"):
            with self._write() as tx:
                if tx.user(name) is None:
                    raise AccountProblem(f"no user {name[:64]!r}")
                revoked = tx.revoke_tokens(name)
                tx.add_audit(AuditEntry.by(actor, AuditAction.TOKEN_REVOKE, AuditResult.OK,
                                           detail=f"{name}: {revoked} token(s)"), at=self.clock())
            return revoked

    # ------------------------------------------------------------- logins and requests

    def login(self, name: str, password: str, client: str) -> Login:
        """Check a password; a new session on success, bound to ``client`` (the address). Attempts
        are throttled per account name and per address, and refusals audited (rate-limited); a name
        that is no account is not written down (people type passwords into the name field)."""
        account_key, client_key = f"user:{name[:64]}", f"client:{client}"
        wait = self.throttle.begin(account_key, client_key)
        user = self._user(name) if people.user_name_problem(name) is None else None
        refusal = AuditEntry(AuditAction.LOGIN, AuditResult.REFUSED, user=user.name if user else None, client=client)
        if wait is not None:
            self.record_denial(replace(refusal, detail="too many failed logins"))
            raise TooManyAttempts(f"too many failed logins: try again in {wait:.0f} s", wait)
        if user is None or not people.password_matches(user.password_hash if user else None, password):
            self.record_denial(replace(refusal, detail="wrong password" if user else "no such account"))
            raise NotAuthenticated("wrong user name or password")
        session_id = secrets.token_urlsafe(32)
        now = self.clock()
        with self._write() as tx:
            current = tx.user(user.name)
            if current is None or current.password_hash != user.password_hash:  # changed while we checked
                raise NotAuthenticated("wrong user name or password")
            tx.add_session(user.name, people.token_digest(session_id), client=client, at=now,
                           expires_at=now + self.session_lifetime)
            if people.password_needs_rehash(user.password_hash):
                tx.set_password(user.name, people.hash_password(password))
            tx.add_audit(AuditEntry(AuditAction.LOGIN, AuditResult.OK, user=user.name, client=client), at=now)
        self.throttle.succeeded(account_key, client_key)
        return Login(user, session_id)

    def logout(self, session_id: str, actor: Actor) -> None:
        with self._write() as tx:
            tx.end_session(people.token_digest(session_id))
            tx.add_audit(AuditEntry.by(actor, AuditAction.LOGOUT, AuditResult.OK), at=self.clock())

    def session_actor(self, session_id: str, client: str) -> Actor | None:
        """The signed-in person of a session id from a (verified) cookie; None if it ended, expired,
        or comes from another address than the login (browsers send a host's cookies to every port
        of it, so another web server on this machine may have seen the cookie)."""
        digest = people.token_digest(session_id)
        return self._web_actor(lambda tx: tx.session_user(digest, client=client, now=self.clock()), client)

    def token_actor(self, token: str, client: str) -> Actor | None:
        """The account of an API token; None for an unknown or revoked one."""
        if not token.startswith(people.TOKEN_PREFIX) or len(token) > 200:
            return None
        digest = people.token_digest(token)
        return self._web_actor(lambda tx: tx.token_user(digest), client)

    def _web_actor(self, find: Callable[[StoreTx], UserRecord | None], client: str) -> Actor | None:
        """The account ``find`` reads, as a web caller; None if none (or the database is unusable:
        no one is let in on a database that cannot be read)."""
        try:
            with self.store.read() as tx:
                user = find(tx)
        except StoreError:
            return None
        return Actor(user.name, user.admin, Channel.WEB, client) if user else None

    def _user(self, name: str) -> UserRecord | None:
        with self._read() as tx:
            return tx.user(name)


def build_accounts(settings: Settings, store: Store | None = None, clock: Callable[[], datetime] = utc_now) -> Accounts:
    """The accounts of the state database under ``settings.state_dir`` (or of ``store``)."""
    return Accounts(store or Store(settings.state_dir / STATE_DATABASE), settings.auth, clock,
                    session_lifetime_hours=settings.session_lifetime_hours,
                    audit_retention_days=settings.audit_retention_days)
