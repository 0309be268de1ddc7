"""The two checks every request passes before anything else: the Host it names (DNS rebinding) and,
for requests that change state, the site it comes from (cross-site request forgery).

Pure ASGI middleware: a refused request never reaches a route, whatever its content type or body.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
from collections.abc import Callable, Iterable
from urllib.parse import urlsplit

import anyio.to_thread
import psutil
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

LOOPBACK_HOST_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})
WILDCARD_ADDRESSES = frozenset({"0.0.0.0", "::", ""})  # noqa: S104 - recognised, not bound, here
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# Sec-Fetch-Site values of requests a page of gpuwarden itself (or the user, typing) can send.
OWN_SITE_FETCHES = frozenset({"same-origin", "none"})
# On every response: no other site may frame gpuwarden's pages (clickjacking: a click inside a frame
# passes the cross-site check, because the frame's own origin sends it).
SECURITY_HEADERS = ((b"x-frame-options", b"DENY"), (b"content-security-policy", b"frame-ancestors 'none'"),
                    (b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"same-origin"))


def is_loopback(host: str) -> bool:
    """Is ``host`` (an address, or a name) one that only this machine can reach?"""
    name = host.strip("[]").lower().rstrip(".")
    if name in LOOPBACK_HOST_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def host_name(header: str) -> str | None:
    """The name in a Host header, without its port: ``[::1]:8000`` -> ``::1``; None if malformed."""
    value = header.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        if end < 0 or (value[end + 1:] and not value[end + 1:].startswith(":")):
            return None
        return value[1:end] or None
    name = value.rsplit(":", 1)[0] if value.count(":") == 1 else value
    if ":" in name:  # a bare IPv6 address is not a valid Host header
        return None
    return name.rstrip(".") or None


def allowed_host_names(bound: str, extra: Iterable[str], *, interfaces: Iterable[str] = ()) -> frozenset[str]:
    """The names a request may give in its Host header: the bound address, the loopback names when
    loopback is reachable, ``extra`` (the allowed_hosts setting), and for a wildcard bind this
    machine's own addresses and name (``interfaces``)."""
    names = {bound.strip("[]").lower(), *(name.lower() for name in extra)}
    if bound in WILDCARD_ADDRESSES or is_loopback(bound):
        names |= LOOPBACK_HOST_NAMES | {"127.0.0.1", "::1"}
    if bound in WILDCARD_ADDRESSES:
        names |= {name.lower() for name in interfaces}
    names.discard("")
    return frozenset(names)


def this_machine_names() -> list[str]:
    """This machine's addresses and host name: what people type when the server listens on every address."""
    names = [socket.gethostname()]
    with contextlib.suppress(OSError):
        names += [address.address.split("%")[0] for addresses in psutil.net_if_addrs().values()
                  for address in addresses if address.family in (socket.AF_INET, socket.AF_INET6)]
    return names


def cross_site_reason(method: str, headers: dict[str, str], host: str, scheme: str) -> str | None:
    """Why a state-changing request is refused as coming from another site; None if it may go on.

    Browsers tell where a request comes from (``Sec-Fetch-Site``, ``Origin``) on every POST, form
    or fetch, whatever its encoding; clients that are not browsers (curl, scripts) send neither and
    cannot be made to send a user's cookie by another site.
    """
    if method in SAFE_METHODS:
        return None
    fetch_site = headers.get("sec-fetch-site")
    if fetch_site is not None and fetch_site not in OWN_SITE_FETCHES:
        return f"cross-site request refused (Sec-Fetch-Site: {fetch_site[:20]})"
    origin = headers.get("origin")
    if origin is None:
        return None
    try:
        parts = urlsplit(origin) if origin != "null" else None
    except ValueError:  # "http://[" and the like
        parts = None
    if parts is None or parts.scheme != scheme or (parts.netloc or "").lower() != host.strip().lower():
        return f"cross-site request refused (Origin: {origin[:80]})"
    return None


# Told of each refused cross-site request (to audit it), with the reason.
CrossSiteHook = Callable[[Scope, str], None]


def _headers(scope: Scope) -> dict[str, str]:
    return {key.decode("latin-1").lower(): value.decode("latin-1") for key, value in scope.get("headers", ())}


class RequestGuard:
    """Refuses a Host that is not this server's (400) and a state-changing request from another
    site (403), before routing."""

    def __init__(self, app: ASGIApp, allowed_hosts: frozenset[str], on_cross_site: CrossSiteHook | None = None) -> None:
        self.app = app
        self.allowed_hosts = allowed_hosts
        self.on_cross_site = on_cross_site

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        send = _with_security_headers(send)
        headers = _headers(scope)
        host = headers.get("host", "")
        if host_name(host) not in self.allowed_hosts:
            detail = f"unknown host {host[:80]!r}: add it to allowed_hosts if people use this name"
            await JSONResponse({"detail": detail}, status_code=400)(scope, receive, send)
            return
        reason = cross_site_reason(scope.get("method", "GET"), headers, host, scope.get("scheme", "http"))
        if reason is not None:
            if self.on_cross_site is not None:
                await anyio.to_thread.run_sync(self.on_cross_site, scope, reason)
            await JSONResponse({"detail": reason}, status_code=403)(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _with_security_headers(send: Send) -> Send:
    """``send`` that adds :data:`SECURITY_HEADERS` to the response (unless the route set them)."""

    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            present = {name.lower() for name, _ in message.get("headers", ())}
            extra = [(name, value) for name, value in SECURITY_HEADERS if name not in present]
            message = {**message, "headers": [*message.get("headers", ()), *extra]}
        await send(message)

    return sending
