"""The limit the web benchmark measures gpuwarden against: a bare Starlette app serving the very
same bytes on the same uvicorn, with the same options as ``gpuwarden serve``.

    python bench/bare_app.py PORT PATH=FILE [PATH=FILE ...]
"""

from __future__ import annotations

import sys
from pathlib import Path

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route


def app_serving(bodies: dict[str, tuple[bytes, str]]) -> Starlette:
    async def answer(request: Request) -> Response:
        body, media_type = bodies[request.url.path]
        return Response(body, media_type=media_type)

    return Starlette(routes=[Route(path, answer) for path in bodies])


def main() -> None:
    port = int(sys.argv[1])
    bodies = {}
    for argument in sys.argv[2:]:
        path, _, file = argument.partition("=")
        media_type = "application/json" if file.endswith(".json") else "text/html; charset=utf-8"
        bodies[path] = (Path(file).read_bytes(), media_type)
    uvicorn.run(app_serving(bodies), host="127.0.0.1", port=port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
