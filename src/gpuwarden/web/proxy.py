"""A stable URL per model: ``/models/NAME/...`` reaches the running model's own server on its
``{port}``, streamed both ways, so OpenAI-compatible tools point at one address that does not change
between loads.

Who may ask is gpuwarden's business (the sign-in checks and the cross-site guard run first); what the
model sees is the request less gpuwarden's own credentials and anything a client could forge: no
gpuwarden API token, no cookie, gpuwarden's own X-Forwarded-* headers. An ``Authorization`` header
that is not a gpuwarden token (a model's own API key) goes through untouched. What the model answers
can set no cookie and runs sandboxed (an origin of its own), so that a page a model serves cannot act
as the visitor on the dashboard. A model that is not running answers 503 with its state. A request
counts as the model's work while it runs, so a model answering through gpuwarden is not idle.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from urllib.parse import unquote

import httpx
from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.requests import ClientDisconnect

from gpuwarden.present import model_state_label
from gpuwarden.records import ModelState
from gpuwarden.web.api import ControllerDep
from gpuwarden.web.auth import MODEL_PROXY_PREFIX, ActorDep, client_address, is_gpuwarden_token

PROXY_PREFIX = MODEL_PROXY_PREFIX
MAX_PROXIED_BODY_BYTES = 32 * 1024 * 1024  # a long prompt, an image or two; not a dataset
CONNECT_TIMEOUT_SECONDS = 10.0
METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD"]
# Hop-by-hop headers (RFC 9110 7.6.1), what each connection sets for itself, and what the model must
# not get: cookies (gpuwarden's session, and those of every other app on this host: browsers do not
# tell ports apart) and where-it-came-from headers a client could forge (gpuwarden sets its own). A
# declared length goes on with the body, streamed as it came (many model servers read no chunked body).
NOT_FORWARDED = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
                           "trailer", "transfer-encoding", "upgrade", "host", "expect", "cookie", "forwarded",
                           "x-forwarded-for", "x-forwarded-host", "x-forwarded-proto", "x-forwarded-prefix",
                           "x-real-ip"})
# A model's answer comes from gpuwarden's own origin, beside the dashboard: it sets no cookie (one could
# replace a gpuwarden session), clears no site data, installs no service worker, and runs sandboxed, as
# an origin of its own, so that no page a model serves can act with the visitor's gpuwarden session.
NOT_RETURNED = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
                          "trailer", "transfer-encoding", "upgrade", "date", "server", "set-cookie",
                          "content-security-policy", "x-frame-options", "service-worker-allowed", "clear-site-data",
                          "access-control-allow-credentials"})
SANDBOX = (b"content-security-policy", b"sandbox allow-scripts allow-downloads; frame-ancestors 'none'")

router = APIRouter(include_in_schema=False)


def forwarded_headers(request: Request, name: str) -> list[tuple[str, str]]:
    """The request's headers as the model gets them (:data:`NOT_FORWARDED` and a gpuwarden token left
    out), and where it came from, as gpuwarden saw it."""
    headers = [(key, value) for key, value in request.headers.items()
               if key not in NOT_FORWARDED and not (key == "authorization" and is_gpuwarden_token(value))]
    if "accept-encoding" not in request.headers:  # never compressed for a client that did not ask
        headers.append(("accept-encoding", "identity"))
    return [*headers, ("x-forwarded-for", client_address(request.scope)),
            ("x-forwarded-host", request.headers.get("host", "")), ("x-forwarded-proto", request.url.scheme),
            ("x-forwarded-prefix", f"{PROXY_PREFIX}{name}")]


def upstream_url(request: Request, name: str, port: int) -> httpx.URL:
    """The model's URL for this request: its raw path (``%2F``, ``%3F`` stay as they were sent) and query."""
    raw_path: bytes = request.scope.get("raw_path") or request.url.path.encode("utf-8")
    path = raw_path.decode("latin-1").split("/", 3)[3] if raw_path.count(b"/") >= 3 else ""  # after /models/NAME/
    query = request.scope.get("query_string", b"").decode("latin-1")
    return httpx.URL(f"http://127.0.0.1:{port}/{path}" + (f"?{query}" if query else ""))


def request_body(request: Request) -> AsyncIterator[bytes] | None:
    """The body, framed as it came: with a declared length or chunked, streamed; without either, none."""
    if "content-length" in request.headers or "chunked" in request.headers.get("transfer-encoding", "").lower():
        return request.stream()
    return None


def proxy_client(request: Request) -> httpx.AsyncClient:
    """The app's one client (made on the server's event loop at the first proxied request); it adds no
    header of its own."""
    client: httpx.AsyncClient | None = getattr(request.app.state, "proxy_client", None)
    if client is None or client.is_closed:
        client = httpx.AsyncClient(timeout=httpx.Timeout(CONNECT_TIMEOUT_SECONDS, read=None), trust_env=False,
                                   follow_redirects=False, limits=httpx.Limits(max_connections=200))
        client.headers = httpx.Headers()
        request.app.state.proxy_client = client
    return client


async def close_proxy_client(state: object) -> None:
    client: httpx.AsyncClient | None = getattr(state, "proxy_client", None)
    if client is not None:
        await client.aclose()


@router.get("/models/{name}")
async def model_root(name: str) -> Response:
    return RedirectResponse(f"{PROXY_PREFIX}{name}/", status_code=307)


@router.api_route("/models/{name}/{path:path}", methods=METHODS)
async def proxy(request: Request, name: str, path: str, controller: ControllerDep, _signed_in: ActorDep) -> Response:
    view = await run_in_threadpool(controller.model_view, name)
    if view is None:
        return JSONResponse({"detail": f"unknown model {name[:80]!r}"}, status_code=404)
    if view.state is not ModelState.RUNNING or view.port is None:
        why = ("it has no port: its command has no {port}" if view.state is ModelState.RUNNING
               else f"state: {model_state_label(view.state)}")
        return JSONResponse({"detail": f"model {name} is not running ({why})", "state": view.state.value},
                            status_code=503, headers={"Retry-After": "5"} if view.loaded else None)
    client = proxy_client(request)
    upstream_request = client.build_request(request.method, upstream_url(request, name, view.port),
                                            headers=forwarded_headers(request, name), content=request_body(request))
    controller.requests.started(name, controller.clock())
    try:
        upstream = await client.send(upstream_request, stream=True)
    except (httpx.HTTPError, ClientDisconnect) as error:
        controller.requests.ended(name, controller.clock())
        return JSONResponse({"detail": f"model {name} (port {view.port}) did not answer: {type(error).__name__}"},
                            status_code=502)
    response = StreamingResponse(_relayed(upstream, lambda: controller.requests.ended(name, controller.clock())),
                                 status_code=upstream.status_code)
    port = view.port
    response.raw_headers = [*((key, rewritten_location(value, name, port) if key.lower() == b"location" else value)
                              for key, value in upstream.headers.raw
                              if key.lower().decode("latin-1") not in NOT_RETURNED), SANDBOX]
    return response


def rewritten_location(location: bytes, name: str, port: int) -> bytes:
    """A redirect as the client must follow it: a path on the model's server (``/docs/``, or its own
    address ``http://127.0.0.1:PORT/docs/``) is that path behind ``/models/NAME``, its dot segments
    resolved first so that it cannot step out; one that is there already (a model that honours
    ``X-Forwarded-Prefix``) stays as it is, and so does a relative one or another site's."""
    text = location.decode("latin-1")
    for own in (f"http://127.0.0.1:{port}", f"http://localhost:{port}"):
        rest = text[len(own):]
        if text.lower().startswith(own) and rest[:1] in ("", "/", "?", "#"):
            text = rest if rest.startswith("/") else "/" + rest
            break
    if not text.startswith("/") or text.startswith("//"):
        return location
    cut = min((index for index in (text.find("?"), text.find("#")) if index >= 0), default=len(text))
    path, tail = without_dot_segments(text[:cut]), text[cut:]
    prefix = f"{PROXY_PREFIX}{name}"
    if path == prefix or path.startswith(prefix + "/"):
        return (path + tail).encode("latin-1")
    return f"{prefix}{path}{tail}".encode("latin-1")


def without_dot_segments(path: str) -> str:
    """``/a/./b/../c`` -> ``/a/c``, as a browser resolves it (``%2e`` counts as a dot), never above ``/``."""
    kept: list[str] = []
    segments = path.split("/")[1:]
    for index, segment in enumerate(segments):
        plain = unquote(segment)
        if plain in (".", ".."):
            if plain == ".." and kept:
                kept.pop()
            if index == len(segments) - 1:
                kept.append("")  # "/a/.." is the folder "/": it keeps its slash
            continue
        kept.append(segment)
    return "/" + "/".join(kept)


async def _relayed(upstream: httpx.Response, ended: Callable[[], None]) -> AsyncIterator[bytes]:
    """The model's answer as it comes; the upstream response is closed however the relay ends (the
    client left, the model failed), and the request stops counting as the model's work."""
    try:
        async for chunk in upstream.aiter_raw():
            yield chunk
    finally:
        ended()
        await upstream.aclose()
