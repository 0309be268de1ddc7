"""The login page and sessions: ``GET /login``, ``POST /login``, ``POST /logout``.

The session cookie holds a random session id, signed; the database keeps its digest and expiry.
It is HttpOnly (no script reads it), SameSite=Strict (no other site's page sends it) and, over
HTTPS, Secure.
"""

from __future__ import annotations

from typing import Annotated

import anyio
import anyio.to_thread
from fastapi import APIRouter, Form, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from gpuwarden.errors import NotAuthenticated, StateUnavailable, TooManyAttempts
from gpuwarden.people import AuthMode
from gpuwarden.web.api import get_accounts
from gpuwarden.web.auth import SESSION_COOKIE, CookieSigner, actor_of, client_address, session_id
from gpuwarden.web.templating import templates

router = APIRouter(include_in_schema=False)
# argon2 takes 64 MiB and a good fraction of a second per check: at most this many run at once, each
# in a worker thread, and past MAX_WAITING_LOGINS more waiting, sign-ins are turned away (503), so a
# flood of logins can neither exhaust memory nor hold the worker threads the other routes need.
CONCURRENT_PASSWORD_CHECKS = 2
MAX_WAITING_LOGINS = 16


def safe_next(target: str | None) -> str:
    """Where to go after signing in: a path on this server only (no ``//host``, no ``\\``, no scheme)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target or len(target) > 2000:
        return "/"
    return target


def _password_checks(request: Request) -> anyio.CapacityLimiter:
    """The app's limiter, made on first use (inside the event loop, where it belongs)."""
    limiter: anyio.CapacityLimiter | None = getattr(request.app.state, "password_checks", None)
    if limiter is None:
        limiter = request.app.state.password_checks = anyio.CapacityLimiter(CONCURRENT_PASSWORD_CHECKS)
    return limiter


def _signer(request: Request) -> CookieSigner:
    signer: CookieSigner = request.app.state.signer
    return signer


def login_page(request: Request, *, next_path: str, user_name: str = "", error: str | None = None,
               status_code: int = 200, headers: dict[str, str] | None = None) -> HTMLResponse:
    # A link from another site (chat, a wiki) arrives without the SameSite=Strict cookie: the page
    # reloads itself once, now from this site, so a signed-in person goes straight on.
    reload = request.headers.get("sec-fetch-site") == "cross-site"
    return templates.TemplateResponse(request, "login.html",
                                      {"next": next_path, "user_name": user_name, "error": error, "reload": reload},
                                      status_code=status_code, headers=headers)


@router.get("/login", response_class=HTMLResponse)
def show_login(request: Request, next: str | None = None) -> Response:
    if get_accounts(request).mode is AuthMode.NONE or actor_of(request) is not None:
        return RedirectResponse(safe_next(next), status_code=303)
    return login_page(request, next_path=safe_next(next))


@router.post("/login", response_class=HTMLResponse)
async def do_login(request: Request, username: Annotated[str, Form(max_length=200)] = "",
                   password: Annotated[str, Form(max_length=2000)] = "",
                   next: Annotated[str, Form(max_length=2000)] = "/") -> Response:
    accounts = get_accounts(request)
    target = safe_next(next)
    if accounts.mode is AuthMode.NONE:
        return RedirectResponse(target, status_code=303)
    checks = _password_checks(request)
    if checks.statistics().tasks_waiting >= MAX_WAITING_LOGINS:
        return login_page(request, next_path=target, user_name=username, status_code=503, headers={"Retry-After": "5"},
                          error="too many sign-ins at once: try again in a few seconds")
    try:
        login = await anyio.to_thread.run_sync(accounts.login, username.strip(), password,
                                               client_address(request.scope), limiter=checks)
    except TooManyAttempts as error:
        return login_page(request, next_path=target, user_name=username, error=str(error), status_code=429,
                          headers={"Retry-After": str(int(error.retry_after_seconds) + 1)})
    except (NotAuthenticated, StateUnavailable) as error:
        status = 401 if isinstance(error, NotAuthenticated) else 503
        return login_page(request, next_path=target, user_name=username, error=str(error), status_code=status)
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(SESSION_COOKIE, _signer(request).sign(login.session_id),
                        max_age=int(accounts.session_lifetime.total_seconds()), httponly=True, samesite="strict",
                        secure=request.url.scheme == "https", path="/")
    return response


@router.post("/logout")
async def logout(request: Request) -> Response:
    actor = actor_of(request)
    session = session_id(request, _signer(request))
    if actor is not None and session is not None:
        await run_in_threadpool(get_accounts(request).logout, session, actor)
    response = RedirectResponse("/login" if get_accounts(request).mode is AuthMode.PASSWORD else "/", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
    if request.headers.get("HX-Request") == "true":
        response.headers["HX-Redirect"] = "/login"
    return response
