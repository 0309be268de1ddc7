"""Who is asking: the signed session cookie of the dashboard, or an API token (``Authorization:
Bearer``), resolved once per request into an :class:`~gpuwarden.people.Actor` that routes read
with :func:`current_actor`.

With ``auth = "password"`` a request without a valid login gets 401 JSON (the API, HTMX requests)
or a redirect to ``/login`` (pages); with ``auth = "none"`` (loopback only) it is anonymous.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from pathlib import Path
from typing import Annotated
from urllib.parse import quote

import anyio.to_thread
from fastapi import Depends, Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from gpuwarden.accounts import Accounts
from gpuwarden.errors import NotAuthenticated
from gpuwarden.people import TOKEN_PREFIX, Actor, AuditAction, AuditEntry, AuditResult, AuthMode, Channel
from gpuwarden.web.guard import SAFE_METHODS

SESSION_COOKIE = "gpuwarden_session"
SECRET_FILE = "session-secret"  # noqa: S105 - the file's name
ASSET_PATH_PREFIXES = ("/static/", "/vendor/", "/favicon.ico")  # served to anyone, no lookup
# Asked for by programs (a scraper, EventSource, the API), not people: 401, never a redirect to a page.
MODEL_PROXY_PREFIX = "/models/"
MACHINE_PATH_PREFIXES = ("/api/", "/events", "/metrics", MODEL_PROXY_PREFIX)
PUBLIC_PATH_PREFIXES = ("/login", *ASSET_PATH_PREFIXES)


class CookieSigner:
    """HMAC-SHA256 over the session id with a secret kept in the state directory: a cookie that was
    not issued here is refused before the database is asked."""

    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def _mac(self, value: str) -> str:
        digest = hmac.new(self._secret, value.encode("utf-8"), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")

    def sign(self, value: str) -> str:
        return f"{value}.{self._mac(value)}"

    def unsign(self, signed: str) -> str | None:
        """The value of a cookie signed here; None for anything else (forged, truncated, not ASCII)."""
        value, _, mac = signed.rpartition(".")
        if not value or len(signed) > 200 or not signed.isascii():
            return None
        return value if hmac.compare_digest(mac.encode("ascii"), self._mac(value).encode("ascii")) else None


def load_secret(path: Path) -> bytes:
    """The signing secret, made on first use, readable by its owner only (on Windows the per-user
    state folder's ACL protects it)."""
    try:
        return bytes.fromhex(path.read_text(encoding="utf-8").strip())
    except (FileNotFoundError, ValueError):
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_bytes(32)
    temporary = path.with_name(f"{path.name}.{secrets.token_hex(4)}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as file:
        file.write(secret.hex())
    temporary.replace(path)
    return secret


def client_address(scope: Scope) -> str:
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


class Authenticator:
    """ASGI middleware: puts the request's Actor in ``scope["state"]["actor"]`` or answers for it."""

    def __init__(self, app: ASGIApp, accounts: Accounts, signer: CookieSigner) -> None:
        self.app = app
        self.accounts = accounts
        self.signer = signer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(ASSET_PATH_PREFIXES):
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        client = client_address(scope)
        authorization = request.headers.get("authorization")
        if authorization is not None and scope["path"].startswith(MODEL_PROXY_PREFIX) and not is_gpuwarden_token(
                authorization):
            authorization = None  # the model's own API key, passed on to it: not gpuwarden's business
        actor: Actor | None = None
        if authorization is not None:
            scheme, _, token = authorization.partition(" ")
            if scheme.lower() == "bearer":
                actor = await anyio.to_thread.run_sync(self.accounts.token_actor, token.strip(), client)
            if actor is None:
                await self._refuse(scope, receive, send, "invalid API token (Authorization: Bearer TOKEN)")
                return
        elif self.accounts.mode is AuthMode.PASSWORD:
            session = session_id(request, self.signer)
            if session is not None:
                actor = await anyio.to_thread.run_sync(self.accounts.session_actor, session, client)
        else:
            actor = Actor(None, admin=False, channel=Channel.WEB, client=client)
        if actor is None and not request.url.path.startswith(PUBLIC_PATH_PREFIXES):
            await self._refuse(scope, receive, send, "sign in first: log in at /login, or send an API token"
                               " (Authorization: Bearer TOKEN, made by `gpuwarden users token NAME`)")
            return
        scope.setdefault("state", {})["actor"] = actor
        await self.app(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, detail: str) -> None:
        request = Request(scope)
        method = request.method
        if method not in SAFE_METHODS:
            entry = AuditEntry(AuditAction.DENIED, AuditResult.REFUSED, client=client_address(scope),
                               detail=f"not signed in: {method} {request.url.path[:200]}")
            await anyio.to_thread.run_sync(self.accounts.record_denial, entry)
        response: Response
        wants_page = (method in SAFE_METHODS and not request.url.path.startswith(MACHINE_PATH_PREFIXES)
                      and request.headers.get("HX-Request") != "true")
        if wants_page:
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            response = RedirectResponse(f"/login?next={quote(target, safe='')}", status_code=303)
        else:
            headers = {"WWW-Authenticate": 'Bearer realm="gpuwarden"'}
            if request.headers.get("HX-Request") == "true":
                headers["HX-Redirect"] = "/login"  # htmx follows it: the dashboard goes to the login page
            response = JSONResponse({"detail": detail}, status_code=401, headers=headers)
        await response(scope, receive, send)


def is_gpuwarden_token(authorization: str) -> bool:
    """Does this ``Authorization`` header carry a gpuwarden API token (not some other service's key)?"""
    scheme, _, token = authorization.strip().partition(" ")
    return scheme.lower() == "bearer" and token.strip().startswith(TOKEN_PREFIX)


def session_id(request: Request, signer: CookieSigner) -> str | None:
    """The session id in the request's cookie, if the cookie was signed here."""
    cookie = request.cookies.get(SESSION_COOKIE)
    return signer.unsign(cookie) if cookie else None


def actor_of(request: Request) -> Actor | None:
    """The Actor the :class:`Authenticator` found; None on a public path nobody signed in to."""
    actor: Actor | None = request.scope.get("state", {}).get("actor")
    return actor


def current_actor(request: Request) -> Actor:
    """The Actor the :class:`Authenticator` found (routes outside the public paths always have one)."""
    actor = actor_of(request)
    if actor is None:
        raise NotAuthenticated("sign in first")
    return actor


async def _actor_dependency(request: Request) -> Actor:
    """:func:`current_actor` as a dependency run on the event loop (a plain ``def`` costs a thread hop)."""
    return current_actor(request)


ActorDep = Annotated[Actor, Depends(_actor_dependency)]
