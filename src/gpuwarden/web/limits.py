"""Hostile requests: bodies above a small limit are refused with 413 before they are read, and a
validation error never echoes a value JSON cannot carry (``NaN``, ``Infinity``, ``1e400``), so bad
input gets a 422, never a 500."""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

MAX_BODY_BYTES = 64 * 1024  # every gpuwarden request body is a few hundred bytes


class BodyLimit:
    """ASGI middleware: 413 for a body whose Content-Length (or actual length, when chunked) is
    above ``max_bytes``. A declared length is checked before a byte is read."""

    def __init__(self, app: ASGIApp, max_bytes: int = MAX_BODY_BYTES, larger: tuple[tuple[str, int], ...] = ()) -> None:
        self.app = app
        self.default_max_bytes = max_bytes
        self.larger = larger  # (path prefix, limit): the model proxy's requests may be larger

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        max_bytes = next((limit for prefix, limit in self.larger if path.startswith(prefix)), self.default_max_bytes)
        headers = dict(scope.get("headers") or ())
        declared = headers.get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > max_bytes):
            await _too_large(send, max_bytes)
            return
        if declared is None and b"transfer-encoding" not in headers:  # no body at all: nothing to count
            await self.app(scope, receive, send)
            return
        received = 0
        started = refused = False

        async def counting_receive() -> Message:
            nonlocal received, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > max_bytes:  # answer 413 now; the app sees a client that left
                    refused = True
                    if not started:
                        await _too_large(send, max_bytes)
                    return {"type": "http.disconnect"}
            return message

        async def watching_send(message: Message) -> None:
            nonlocal started
            if refused:
                return  # the app's answer to a body it never got whole: 413 went out instead
            started = started or message["type"] == "http.response.start"
            await send(message)

        await self.app(scope, counting_receive, watching_send)


async def _too_large(send: Send, max_bytes: int) -> None:
    body = f'{{"detail": "request body larger than {max_bytes} bytes"}}'.encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def validation_error(request: Request, error: Exception) -> JSONResponse:
    """422 with where and why, without the offending input (which may be NaN, huge, or hostile)."""
    assert isinstance(error, RequestValidationError)
    detail: list[dict[str, Any]] = [
        {"loc": [str(part) for part in problem.get("loc", ())], "msg": str(problem.get("msg", "")),
         "type": str(problem.get("type", ""))}
        for problem in error.errors()]
    return JSONResponse(status_code=422, content={"detail": detail})
