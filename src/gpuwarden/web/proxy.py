"""A stable URL per model: ``/models/NAME/...`` reaches the running model's own server on its
``{port}``, streamed both ways, so OpenAI-compatible tools point at one address that does not change
between loads.

Who may ask is gpuwarden's business (the sign-in checks and the cross-site guard run first); what the
model sees is the request less gpuwarden's own credentials: a gpuwarden API token or session cookie
never reaches a model process. An ``Authorization`` header that is not a gpuwarden token (a model's
own API key) goes through untouched. What the model answers can set no cookie and runs sandboxed
(an origin of its own), so that a page a model serves cannot act as the visitor on the dashboard. A
model that is not running answers 503 with its state. Every request counts as the model's activity,
so a model in use is never unloaded as idle.
"""

from __future__ import annotations

import httpx
from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.background import BackgroundTask

from gpuwarden.present import model_state_label
from gpuwarden.records import ModelState
from gpuwarden.web.api import ControllerDep
from gpuwarden.web.auth import MODEL_PROXY_PREFIX, SESSION_COOKIE, ActorDep, client_address, is_gpuwarden_token

PROXY_PREFIX = MODEL_PROXY_PREFIX
MAX_PROXIED_BODY_BYTES = 32 * 1024 * 1024  # a long prompt, an image or two; not a dataset
CONNECT_TIMEOUT_SECONDS = 10.0
METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD"]
# Hop-by-hop headers (RFC 9110 7.6.1) and what each connection sets for itself. A declared length is
# passed on with the body streamed as it came (many model servers read no chunked request body).
NOT_FORWARDED = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
                           "trailer", "transfer-encoding", "upgrade", "host"})
# A model's answer comes from gpuwarden's own origin, beside the dashboard: it may set no cookie (its
# Set-Cookie could replace a gpuwarden session) and runs sandboxed, as an origin of its own, so that no
# page a model serves can act with the visitor's gpuwarden session.
NOT_RETURNED = NOT_FORWARDED | {"date", "server", "set-cookie", "content-security-policy", "x-frame-options"}
SANDBOX = (b"content-security-policy", b"sandbox allow-scripts allow-forms allow-popups allow-downloads;"
                                       b" frame-ancestors 'none'")

router = APIRouter(include_in_schema=False)


def forwarded_headers(request: Request, name: str) -> list[tuple[str, str]]:
    """The request's headers as the model gets them: hop-by-hop ones, gpuwarden's token and its
    session cookie left out; where it came from added."""
    headers = []
    for key, value in request.headers.items():
        if key in NOT_FORWARDED or (key == "authorization" and is_gpuwarden_token(value)):
            continue
        if key == "cookie":
            value = "; ".join(part.strip() for part in value.split(";")
                              if part.strip() and part.strip().split("=", 1)[0] != SESSION_COOKIE)
            if not value.strip():
                continue
        headers.append((key, value))
    return [*headers, ("x-forwarded-for", client_address(request.scope)), ("x-forwarded-host", request.headers.get(
        "host", "")), ("x-forwarded-proto", request.url.scheme), ("x-forwarded-prefix", f"{PROXY_PREFIX}{name}")]


def proxy_client(request: Request) -> httpx.AsyncClient:
    """The app's one client (made on the server's event loop at the first proxied request)."""
    client: httpx.AsyncClient | None = getattr(request.app.state, "proxy_client", None)
    if client is None or client.is_closed:
        client = httpx.AsyncClient(timeout=httpx.Timeout(CONNECT_TIMEOUT_SECONDS, read=None), trust_env=False,
                                   follow_redirects=False, limits=httpx.Limits(max_connections=200))
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
    view = next((view for view in await run_in_threadpool(controller.models) if view.name == name), None)
    if view is None:
        return JSONResponse({"detail": f"unknown model {name[:80]!r}"}, status_code=404)
    if view.state is not ModelState.RUNNING or view.port is None:
        why = ("it has no port: its command has no {port}" if view.state is ModelState.RUNNING
               else f"state: {model_state_label(view.state)}")
        return JSONResponse({"detail": f"model {name} is not running ({why})", "state": view.state.value},
                            status_code=503, headers={"Retry-After": "5"} if view.loaded else None)
    controller.note_activity(name)
    client = proxy_client(request)
    url = httpx.URL(f"http://127.0.0.1:{view.port}/{path}", query=request.url.query.encode("utf-8"))
    body = request.stream() if request.method not in ("GET", "HEAD") else None
    upstream_request = client.build_request(request.method, url, headers=forwarded_headers(request, name),
                                            content=body)
    try:
        upstream = await client.send(upstream_request, stream=True)
    except httpx.HTTPError as error:
        return JSONResponse({"detail": f"model {name} (port {view.port}) did not answer: {type(error).__name__}"},
                            status_code=502)
    response = StreamingResponse(upstream.aiter_raw(), status_code=upstream.status_code,
                                 background=BackgroundTask(upstream.aclose))
    response.raw_headers = [*((key.encode("latin-1"), value.encode("latin-1"))
                              for key, value in upstream.headers.multi_items() if key.lower() not in NOT_RETURNED),
                            SANDBOX]
    return response
