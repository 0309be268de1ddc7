"""REST API (OpenAPI docs at ``/docs``). Routes are plain ``def``: the controller blocks (nvidia-smi,
stopping a process tree), so FastAPI runs them in its thread pool."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

from gpuwarden.config import RUNTIME_SETTING_RANGES
from gpuwarden.controller import Controller
from gpuwarden.probe.shared import Freshness
from gpuwarden.records import parse_selection
from gpuwarden.web.probing import probe_waiter

router = APIRouter(prefix="/api", tags=["api"])


def get_controller(request: Request) -> Controller:
    controller: Controller = request.app.state.controller
    return controller


ControllerDep = Annotated[Controller, Depends(get_controller)]


class LoadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Elements are checked by parse_selection, so a bad one (true, 1.5) gets the same sentence as "x".
    gpus: StrictStr | list[Any] | None = Field(
        default=None, description="'1', '0,1', [0, 1] or 'cpu'; default: the model's default number of idle GPUs.")
    requested_by: str | None = Field(default=None, max_length=100, description="Who asks (shown to others).")


class SettingsUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    memory_threshold_mib: StrictInt | None = Field(default=None, ge=RUNTIME_SETTING_RANGES["memory_threshold_mib"][0],
                                             le=RUNTIME_SETTING_RANGES["memory_threshold_mib"][1])
    refresh_interval_seconds: StrictInt | None = Field(default=None,
                                                 ge=RUNTIME_SETTING_RANGES["refresh_interval_seconds"][0],
                                                 le=RUNTIME_SETTING_RANGES["refresh_interval_seconds"][1])


def requester(request: Request, given: str | None) -> str:
    client = request.client.host if request.client else "unknown"
    return f"{given.strip()} ({client})" if given and given.strip() else client


@router.get("/gpus", summary="The GPU status document")
async def gpus(request: Request, controller: ControllerDep, refresh: bool = False) -> dict[str, Any]:
    """The status from the latest refresh; ``?refresh=true`` probes now (concurrent callers share one
    run, and wait for it without holding a worker thread)."""
    snapshot = await probe_waiter(request).snapshot(Freshness.NOW if refresh else Freshness.CACHED)
    document = await run_in_threadpool(controller.status_of, snapshot)
    return document.to_dict()


@router.get("/models", summary="Every configured model with its state")
def models(controller: ControllerDep) -> list[dict[str, Any]]:
    return [view.to_dict() for view in controller.models()]


@router.post("/models/{name}/load", summary="Load a model onto idle GPUs",
             responses={404: {"description": "unknown model"}, 409: {"description": "refused: GPU busy"},
                        422: {"description": "bad selection"}})
def load(name: str, body: LoadRequest, request: Request, controller: ControllerDep) -> dict[str, Any]:
    controller.model_spec(name)  # an unknown model is a 404, whatever the selection
    selection = parse_selection(body.gpus) if body.gpus is not None else None
    view = controller.load(name, selection, requested_by=requester(request, body.requested_by))
    return view.to_dict()


@router.post("/models/{name}/unload", summary="Unload a model and free its GPUs",
             responses={404: {"description": "unknown model"}, 409: {"description": "not loaded"}})
def unload(name: str, controller: ControllerDep) -> dict[str, Any]:
    return controller.unload(name).to_dict()


@router.get("/settings", summary="Runtime settings")
def get_settings(controller: ControllerDep) -> dict[str, int]:
    return controller.runtime.to_dict()


@router.put("/settings", summary="Change and persist the threshold and refresh interval")
def put_settings(body: SettingsUpdate, controller: ControllerDep) -> dict[str, int]:
    values = {key: value for key, value in body.model_dump().items() if value is not None}
    return controller.update_settings(values).to_dict()
