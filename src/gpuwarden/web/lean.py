"""Lean routes for the bodies served as ready bytes (``/api/gpus``, the dashboard fragment).

They are documented in the OpenAPI schema like any route, but served without FastAPI's per-request
parameter and dependency machinery, which costs a quarter of a cached read's time (bench/). Their
endpoints take the request alone and read their few flags with :func:`query_flag`, which refuses
what FastAPI would refuse, with the same 422.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, cast

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute

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


def query_flag(request: Request, name: str) -> bool:
    """A boolean query parameter (absent: False); 422 for anything that is not a boolean."""
    raw = request.query_params.get(name)
    if raw is None:
        return False
    word = raw.strip().lower()
    if word in TRUE_WORDS or word in FALSE_WORDS:
        return word in TRUE_WORDS
    raise RequestValidationError([{"type": "bool_parsing", "loc": ("query", name),
                                   "msg": "Input should be a valid boolean, unable to interpret input"}])


def flag_parameters(*flags: tuple[str, str]) -> dict[str, Any]:
    """``openapi_extra`` documenting boolean query parameters (name, description)."""
    return {"parameters": [{"name": name, "in": "query", "required": False, "description": description,
                            "schema": {"type": "boolean", "default": False}} for name, description in flags]}
