"""Dashboard routes: the full page and its HTMX fragments (the same ``_content.html`` partial serves
both), the actions behind the buttons, and the server-sent events that keep other dashboards live.

Actions answer 200 with the re-rendered content (a refusal shows next to its model), so HTMX swaps
it in; the REST API gives the proper 409/404/422 codes. Actions require the ``HX-Request`` header:
a cross-site form cannot set it, so another web page cannot load or unload models.
"""

from __future__ import annotations

import json
import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response, StreamingResponse

from gpuwarden.accounts import Accounts
from gpuwarden.controller import Controller
from gpuwarden.errors import BadSelection, ControllerError
from gpuwarden.people import Actor
from gpuwarden.probe.shared import Freshness
from gpuwarden.records import ModelView
from gpuwarden.waitlist import WaitEntry
from gpuwarden.web.api import AccountsDep, ControllerDep, rendered_views, selection_for
from gpuwarden.web.assets import AssetMissing, vendor_file
from gpuwarden.web.auth import ActorDep, current_actor
from gpuwarden.web.context import content_context
from gpuwarden.web.events import EventHub
from gpuwarden.web.lean import LeanRoute, query_flag
from gpuwarden.web.probing import probe_waiter
from gpuwarden.web.templating import templates

router = APIRouter(include_in_schema=False)

SHARED_POLL_SECONDS = 5.0  # dashboards whose periodic polls fall this close together share one probe


async def require_htmx(request: Request) -> None:
    if request.headers.get("HX-Request") != "true":
        raise HTTPException(status_code=400, detail="dashboard actions are HTMX requests (HX-Request header)")


def render(request: Request, template: str, context: dict[str, Any]) -> HTMLResponse:
    return templates.TemplateResponse(request, template, context)


def form_selection(gpus: list[str] | None) -> str | list[str] | None:
    """The form's ``gpus``: checkboxes give one value per GPU; a single value may also be "0,1" or "cpu"."""
    if not gpus:
        return None
    return gpus[0] if len(gpus) == 1 else gpus


async def awaited_context(request: Request, controller: Controller, accounts: Accounts, actor: Actor,
                          freshness: Freshness) -> dict[str, Any]:
    """The content context, having awaited a reading as fresh as ``freshness`` without a worker thread."""
    snapshot = await probe_waiter(request).snapshot(freshness)
    return await run_in_threadpool(lambda: content_context(controller, accounts, actor, controller.status_of(snapshot)))


@router.get("/", response_class=HTMLResponse)
@router.get("/dashboard", response_class=HTMLResponse)
async def dashboard(request: Request, controller: ControllerDep, accounts: AccountsDep,
                    actor: ActorDep) -> HTMLResponse:
    return render(request, "dashboard.html", await awaited_context(request, controller, accounts, actor,
                                                                   Freshness.CACHED))


async def refresh(request: Request) -> Response:
    """The dashboard content. The periodic poll probes unless another dashboard just did;
    ``now=true`` (the Refresh button) always probes; ``probe=false`` takes the latest reading (after
    a push). Rendered once per change, whoever asks: served as ready bytes until something changes."""
    probe = query_flag(request, "probe", default=True)
    freshness = (Freshness.CACHED if not probe else Freshness.NOW if query_flag(request, "now")
                 else Freshness.within(SHARED_POLL_SECONDS))
    snapshot = await probe_waiter(request).snapshot(freshness)
    body = await rendered_views(request).dashboard(snapshot, current_actor(request))
    return with_server_time(Response(body, media_type="text/html; charset=utf-8"))


router.add_api_route("/dashboard/refresh", refresh, methods=["GET"], route_class_override=LeanRoute,
                     response_class=HTMLResponse)


def with_server_time(response: Response) -> Response:
    """The server's clock (ms since the epoch) beside a fragment that may have been rendered a while
    ago: the browser ticks its ages and uptimes from it (dashboard.js)."""
    response.headers["X-Gpuwarden-Time"] = str(int(time.time() * 1000))
    return response


def with_toast(response: HTMLResponse, message: str, *, ok: bool) -> HTMLResponse:
    """The dashboard shows ``message`` as a toast (dashboard.js, as text, never as HTML)."""
    # On the body: the element that asked may be gone by then (a pushed refresh swapped it out).
    response.headers["HX-Trigger"] = json.dumps({"gw-toast": {"message": message[:500], "ok": ok, "target": "body"}})
    return response


@router.post("/dashboard/models/{name}/load", response_class=HTMLResponse, dependencies=[Depends(require_htmx)])
def load(request: Request, name: str, controller: ControllerDep, accounts: AccountsDep, actor: ActorDep,
         gpus: Annotated[list[str] | None, Form()] = None,
         chosen: Annotated[str | None, Form()] = None, wait: Annotated[str | None, Form()] = None) -> HTMLResponse:
    """A GPU button sends its GPU; "Load on selected" sends the ticked ones (``chosen``): none ticked
    is refused, never taken for the model's default GPUs. "Wait for GPU N" sends ``wait``: the load
    joins the queue while the GPU is busy (for ``wait_timeout_minutes``)."""
    flash: dict[str, str] = {}
    try:
        controller.model_spec(name)  # an unknown model is reported before a bad selection
        if chosen is not None and not gpus:
            raise BadSelection(f"tick the GPUs to load {name} on (at least one)")
        selection = selection_for(controller, name, form_selection(gpus), actor)
        if wait == "true":
            outcome = controller.load_or_wait(name, selection, actor=actor,
                                              wait_seconds=controller.settings.wait_timeout_seconds)
        else:
            outcome = controller.load(name, selection, actor=actor)
        message, ok = load_message(name, outcome), True
    except ControllerError as error:
        flash[name] = message = str(error)
        ok = False
    response = render(request, "_content.html", content_context(controller, accounts, actor, flash=flash))
    return with_toast(response, message, ok=ok)


def load_message(name: str, outcome: ModelView | WaitEntry) -> str:
    if isinstance(outcome, WaitEntry):
        return (f"{name} waits for GPU {outcome.gpus_label} (request {outcome.id}): it starts by itself once the GPU"
                " is idle and its turn comes")
    where = f"GPU {','.join(map(str, outcome.gpu_indexes))}" if outcome.gpu_indexes else "the CPU"
    return f"Loading {name} on {where}"


@router.post("/dashboard/queue/{entry_id}/withdraw", response_class=HTMLResponse,
             dependencies=[Depends(require_htmx)])
def withdraw(request: Request, entry_id: int, controller: ControllerDep, accounts: AccountsDep,
             actor: ActorDep) -> HTMLResponse:
    try:
        entry = controller.withdraw(entry_id, actor=actor)
        message, ok = f"Request {entry.id} ({entry.model_name}) withdrawn", True
    except ControllerError as error:
        message, ok = str(error), False
    response = render(request, "_content.html", content_context(controller, accounts, actor))
    return with_toast(response, message, ok=ok)


@router.post("/dashboard/models/{name}/unload", response_class=HTMLResponse, dependencies=[Depends(require_htmx)])
def unload(request: Request, name: str, controller: ControllerDep, accounts: AccountsDep,
           actor: ActorDep) -> HTMLResponse:
    flash: dict[str, str] = {}
    try:
        controller.unload(name, actor=actor)
        message, ok = f"Unloaded {name}", True
    except ControllerError as error:
        flash[name] = message = str(error)
        ok = False
    response = render(request, "_content.html", content_context(controller, accounts, actor, flash=flash))
    return with_toast(response, message, ok=ok)


def _whole_number(raw: str) -> int | str:
    """A form field as a whole number where it is one; the text otherwise (refused with its range)."""
    text = raw.strip()
    return int(text) if text.isascii() and text.isdigit() and len(text) <= 9 else text


@router.post("/dashboard/settings", response_class=HTMLResponse, dependencies=[Depends(require_htmx)])
def save_settings(request: Request, controller: ControllerDep, accounts: AccountsDep, actor: ActorDep,
                  memory_threshold_mib: Annotated[str, Form()] = "",
                  refresh_interval_seconds: Annotated[str, Form()] = "") -> HTMLResponse:
    entered = {key: _whole_number(raw) for key, raw in (("memory_threshold_mib", memory_threshold_mib),
                                                        ("refresh_interval_seconds", refresh_interval_seconds))
               if raw.strip()}
    message = None
    if entered:
        try:
            controller.update_settings(entered, actor=actor)  # checks every value against RUNTIME_SETTING_RANGES
            controller.snapshot(Freshness.NOW)
            message = "saved"
        except ControllerError as error:
            message = str(error)
    response = render(request, "_content.html", content_context(controller, accounts, actor, settings_flash=message))
    return with_toast(response, "Settings saved" if message == "saved" else f"Settings: {message}",
                      ok=message == "saved") if message else response


@router.get("/events")
async def events(request: Request) -> StreamingResponse:
    """Server-sent events: ``update`` whenever a model or a GPU changes (load, unload, crash, refresh),
    pushed the moment it happens (:mod:`gpuwarden.web.events`)."""
    hub: EventHub = request.app.state.events
    return StreamingResponse(hub.stream(request.is_disconnected), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


@router.get("/favicon.ico")
def favicon() -> Response:
    return RedirectResponse("/static/favicon.svg", status_code=301)


@router.get("/vendor/{name}")
def vendor(name: str) -> Response:
    try:
        return FileResponse(vendor_file(name), media_type="text/javascript",
                            headers={"Cache-Control": "public, max-age=86400"})
    except KeyError:
        raise HTTPException(status_code=404, detail="no such file") from None
    except AssetMissing as error:
        raise HTTPException(status_code=500, detail=str(error)) from None
