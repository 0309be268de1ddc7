"""REST API (OpenAPI docs at ``/docs``). Routes are plain ``def``: the controller blocks (nvidia-smi,
stopping a process tree), so FastAPI runs them in its thread pool."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, model_validator

from gpuwarden.accounts import Accounts
from gpuwarden.controller import Controller
from gpuwarden.errors import BadSelection
from gpuwarden.people import Actor, AuditAction, AuditEntry, AuditResult, may_administer
from gpuwarden.probe.shared import Freshness
from gpuwarden.queueing import line_of
from gpuwarden.records import Selection, parse_selection
from gpuwarden.runtime import RUNTIME_SETTING_RANGES
from gpuwarden.waitlist import MAX_WAIT_SECONDS, MIN_WAIT_SECONDS, WaitEntry
from gpuwarden.web.auth import ActorDep
from gpuwarden.web.lean import LeanRoute, flag_parameters, query_flag
from gpuwarden.web.metrics import metrics_text
from gpuwarden.web.probing import probe_waiter
from gpuwarden.web.rendered import RenderedViews

router = APIRouter(prefix="/api", tags=["api"])
metrics_router = APIRouter(tags=["metrics"])


def get_controller(request: Request) -> Controller:
    controller: Controller = request.app.state.controller
    return controller


def get_accounts(request: Request) -> Accounts:
    accounts: Accounts = request.app.state.accounts
    return accounts


def rendered_views(request: Request) -> RenderedViews:
    views: RenderedViews = request.app.state.rendered
    return views


async def _controller_dependency(request: Request) -> Controller:
    return get_controller(request)  # as a dependency on the event loop: a plain def costs a thread hop


async def _accounts_dependency(request: Request) -> Accounts:
    return get_accounts(request)


ControllerDep = Annotated[Controller, Depends(_controller_dependency)]
AccountsDep = Annotated[Accounts, Depends(_accounts_dependency)]


class LoadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Elements are checked by parse_selection, so a bad one (true, 1.5) gets the same sentence as "x".
    gpus: StrictStr | list[Any] | None = Field(
        default=None, description="'1', '0,1', [0, 1] or 'cpu'; default: the model's default number of idle GPUs.")
    wait: StrictBool = Field(default=False, description="If the GPUs are busy, wait in the queue for them (202) instead"
                             " of being refused (409); needs gpus.")
    wait_timeout_seconds: StrictInt | None = Field(
        default=None, ge=MIN_WAIT_SECONDS, le=MAX_WAIT_SECONDS,
        description="How long to wait at most (default: the wait_timeout_minutes setting).")

    @model_validator(mode="before")
    @classmethod
    def _no_free_text_owner(cls, data: Any) -> Any:
        if isinstance(data, dict) and "requested_by" in data:
            raise ValueError("requested_by is no longer accepted: a model belongs to whoever loads it (the signed-in"
                             " user, or the API token's user)")
        if isinstance(data, dict) and data.get("wait_timeout_seconds") is not None and data.get("wait") is not True:
            raise ValueError("wait_timeout_seconds is for a load that waits: add \"wait\": true")
        return data


class SettingsUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    memory_threshold_mib: StrictInt | None = Field(default=None, ge=RUNTIME_SETTING_RANGES["memory_threshold_mib"][0],
                                             le=RUNTIME_SETTING_RANGES["memory_threshold_mib"][1])
    refresh_interval_seconds: StrictInt | None = Field(default=None,
                                                 ge=RUNTIME_SETTING_RANGES["refresh_interval_seconds"][0],
                                                 le=RUNTIME_SETTING_RANGES["refresh_interval_seconds"][1])


def selection_for(controller: Controller, name: str, raw: object, actor: Actor) -> Selection | None:
    """A request's GPU selection, parsed; one that cannot be understood is refused and audited."""
    try:
        return parse_selection(raw) if raw is not None else None
    except BadSelection as error:
        controller.audit(AuditEntry.by(actor, AuditAction.LOAD, AuditResult.REFUSED, model=name, detail=str(error)))
        raise


async def gpus(request: Request) -> Response:
    """The status from the latest refresh; ``?refresh=true`` probes now (concurrent callers share one
    run, and wait for it without holding a worker thread). The document is rendered once per change
    and served as ready bytes until something it shows changes."""
    freshness = Freshness.NOW if query_flag(request, "refresh") else Freshness.CACHED
    snapshot = await probe_waiter(request).snapshot(freshness)
    return Response(await rendered_views(request).status(snapshot), media_type="application/json")


router.add_api_route(
    "/gpus", gpus, methods=["GET"], route_class_override=LeanRoute, summary="The GPU status document",
    response_class=Response, openapi_extra=flag_parameters(("refresh", "Run nvidia-smi now instead of using the"
                                                                       " latest reading.")),
    responses={200: {"content": {"application/json": {}}, "description": "the status document"}})


@router.get("/gpus/history", summary="The last hour of each GPU's memory and utilization")
async def gpus_history(controller: ControllerDep) -> dict[str, Any]:
    """Every reading the server kept of the last hour (``history_interval_seconds`` apart, and at
    each refresh), oldest first."""
    return {**controller.gpus.history.to_dict(), "interval_seconds": controller.settings.history_interval_seconds}


@metrics_router.get("/metrics", summary="Prometheus metrics", response_class=Response)
def prometheus_metrics(request: Request) -> Response:
    """GPUs, models, probes and refusals in Prometheus' text format (see the README's scrape config)."""
    body, content_type = metrics_text(request.app.state.metrics)
    return Response(body, media_type=content_type)


@router.get("/models", summary="Every configured model with its state")
def models(controller: ControllerDep) -> list[dict[str, Any]]:
    return [view.to_dict() for view in controller.models()]


@router.post("/models/{name}/load", summary="Load a model onto idle GPUs, or wait in the queue for busy ones",
             responses={202: {"description": "queued: the GPUs are busy, and the load waits for them"},
                        404: {"description": "unknown model"}, 409: {"description": "refused: GPU busy"},
                        422: {"description": "bad selection"}})
def load(name: str, body: LoadRequest, controller: ControllerDep, actor: ActorDep,
         response: Response) -> dict[str, Any]:
    """Loads now (200, the model), or with ``wait`` queues the load while its GPUs are busy (202:
    ``{"queued": true, "id": ..., "position": N, ...}``); it then starts by itself once they are
    idle and it is first in line. ``GET /api/queue/ID`` says how it is doing."""
    controller.model_spec(name)  # an unknown model is a 404, whatever the selection
    selection = selection_for(controller, name, body.gpus, actor)
    if not body.wait:
        return controller.load(name, selection, actor=actor).to_dict()
    wait_seconds = body.wait_timeout_seconds or controller.settings.wait_timeout_seconds
    outcome = controller.load_or_wait(name, selection, actor=actor, wait_seconds=wait_seconds)
    if not isinstance(outcome, WaitEntry):
        return outcome.to_dict()
    response.status_code = 202
    return {"queued": True, **queue_entry(controller, outcome)}


def queue_entry(controller: Controller, entry: WaitEntry) -> dict[str, Any]:
    """A queued load in the API's form: with its place in line and its GPUs' holders while it waits."""
    line = line_of(controller.queue_lines(), entry.id)
    return line.to_dict() if line is not None else entry.to_dict()


@router.get("/queue", summary="The loads waiting for busy GPUs, first come first")
def queue(controller: ControllerDep) -> list[dict[str, Any]]:
    """Each waiting load: who, which model, which GPUs, since when, until when, its position (1: next
    in line on all its GPUs) and what holds each GPU now."""
    return [line.to_dict() for line in controller.queue_lines()]


@router.get("/queue/{entry_id}", summary="One queued load: waiting, or how it ended",
            responses={404: {"description": "no such request"}})
def queue_request(entry_id: int, controller: ControllerDep) -> dict[str, Any]:
    return queue_entry(controller, controller.queue.entry(entry_id))


@router.delete("/queue/{entry_id}", summary="Withdraw a waiting load (its owner or an admin)",
               responses={403: {"description": "another person's request"}, 404: {"description": "no such request"},
                          409: {"description": "no longer waiting"}})
def withdraw(entry_id: int, controller: ControllerDep, actor: ActorDep) -> dict[str, Any]:
    return controller.withdraw(entry_id, actor=actor).to_dict()


@router.post("/models/{name}/unload", summary="Unload a model and free its GPUs",
             responses={403: {"description": "another person's model"}, 404: {"description": "unknown model"},
                        409: {"description": "not loaded"}})
def unload(name: str, controller: ControllerDep, actor: ActorDep) -> dict[str, Any]:
    return controller.unload(name, actor=actor).to_dict()


@router.get("/settings", summary="Runtime settings")
def get_settings(controller: ControllerDep) -> dict[str, int]:
    return controller.runtime.to_dict()


@router.put("/settings", summary="Change and persist the threshold and refresh interval (admins)",
            responses={403: {"description": "not an admin"}})
def put_settings(body: SettingsUpdate, controller: ControllerDep, actor: ActorDep) -> dict[str, int]:
    values = {key: value for key, value in body.model_dump().items() if value is not None}
    return controller.update_settings(values, actor=actor).to_dict()


@router.get("/audit", summary="The audit trail, newest first")
def audit(accounts: AccountsDep, limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> list[dict[str, Any]]:
    """Every load, unload, refusal, crash, failure, settings change, login, failed login and account
    change: time, user, client address, action, model, GPUs, result and detail."""
    return [entry.to_dict() for entry in accounts.recent(limit)]


@router.get("/me", summary="Who the caller is, and what they may do")
def me(controller: ControllerDep, actor: ActorDep) -> dict[str, Any]:
    mode = controller.settings.auth
    return {"user": actor.name, "admin": actor.admin, "auth": mode.value,
            "may_change_settings": may_administer(actor, mode)}
