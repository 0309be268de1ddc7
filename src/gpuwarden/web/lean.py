"""Lean routes for the bodies served as ready bytes (``/api/gpus``, the dashboard fragment): the
requests every open dashboard and polling script makes.

They are routes like any other (documented in the OpenAPI schema), but their endpoints take the
request alone and read their few flags with :func:`query_flag`, which refuses what FastAPI would
refuse, with the same 422. :class:`HotPaths` answers their GETs before FastAPI's router: its route
matching, parameter and dependency machinery cost more than the answer itself (bench/).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import Any, cast

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from gpuwarden.web.limits import validation_error

TRUE_WORDS = frozenset({"1", "true", "t", "yes", "y", "on"})  # as pydantic reads a boolean
FALSE_WORDS = frozenset({"0", "false", "f", "no", "n", "off"})

LeanEndpoint = Callable[[Request], Awaitable[Response]]


class LeanRoute(APIRoute):
    """An :class:`APIRoute` whose endpoint is called with the request alone."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        endpoint = cast(LeanEndpoint, self.endpoint)

        async def handler(request: Request) -> Response:
            return await endpoint(request)

        return handler


class HotPaths:
    """ASGI middleware, inside gpuwarden's own (the Host, cross-site and sign-in checks have run):
    a GET of one of ``endpoints``' paths goes straight to its endpoint."""

    def __init__(self, app: ASGIApp, endpoints: Mapping[str, LeanEndpoint]) -> None:
        self.app = app
        self.endpoints = dict(endpoints)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        endpoint = self.endpoints.get(scope["path"]) if scope["type"] == "http" and scope["method"] == "GET" else None
        if endpoint is None:
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive, send)
        try:
            response = await endpoint(request)
        except RequestValidationError as error:
            response = await validation_error(request, error)
        await response(scope, receive, send)


def query_flag(request: Request, name: str, *, default: bool = False) -> bool:
    """A boolean query parameter (``default`` when absent); 422 for anything that is not a boolean."""
    if not request.scope.get("query_string"):
        return default
    raw = request.query_params.get(name)
    if raw is None:
        return default
    word = raw.strip().lower()
    if word in TRUE_WORDS or word in FALSE_WORDS:
        return word in TRUE_WORDS
    raise RequestValidationError([{"type": "bool_parsing", "loc": ("query", name),
                                   "msg": "Input should be a valid boolean, unable to interpret input"}])


def flag_parameters(*flags: tuple[str, str]) -> dict[str, Any]:
    """``openapi_extra`` documenting boolean query parameters (name, description)."""
    return {"parameters": [{"name": name, "in": "query", "required": False, "description": description,
                            "schema": {"type": "boolean", "default": False}} for name, description in flags]}
