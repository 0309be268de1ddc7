"""Path traversal through /vendor and /static, sent RAW to the ASGI app.

An HTTP client (httpx, a browser) normalizes ``..`` away before sending, so such a request never
reaches the route. A hostile client sends the bytes it likes; here the scope carries them as a
server would: ``raw_path`` as sent, ``path`` percent-decoded (and, to be thorough, undecoded too).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
from starlette.types import ASGIApp

from gpuwarden.controller import build_controller
from gpuwarden.web.app import create_app
from tests.conftest import FAKE_MODELS, FakeSmi, make_settings

TRAVERSALS = [
    "/vendor/../../etc/passwd",
    "/vendor/..%2F..%2Fetc%2Fpasswd",
    "/vendor/%2e%2e/%2e%2e/etc/passwd",
    "/vendor/%2E%2E%2F%2E%2E%2Fetc%2Fpasswd",
    "/vendor/..",
    "/vendor/..%5C..%5Cpyproject.toml",
    "/vendor/htmx.min.js/../../../pyproject.toml",
    "/vendor/htmx.min.js%2F..%2F..%2F..%2F..%2F..%2F..%2Fpyproject.toml",
    "/static/../../../../pyproject.toml",
    "/static/..%2F..%2F..%2F..%2Fpyproject.toml",
    "/static/%2e%2e/%2e%2e/%2e%2e/%2e%2e/pyproject.toml",
]


def scope_for(path: str, raw_path: str) -> dict[str, Any]:
    return {
        "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
        "method": "GET", "scheme": "http", "path": path, "raw_path": raw_path.encode("ascii"), "root_path": "",
        "query_string": b"", "headers": [(b"host", b"127.0.0.1:8000"), (b"accept", b"*/*")],
        "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8000),
    }


async def raw_get(app: ASGIApp, path: str, raw_path: str) -> tuple[int, bytes]:
    """One request straight through the ASGI interface; (status, body)."""
    messages: list[dict[str, Any]] = []
    done = asyncio.Event()
    sent_request = False

    async def receive() -> dict[str, Any]:
        nonlocal sent_request
        if not sent_request:
            sent_request = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await done.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        messages.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            done.set()

    await asyncio.wait_for(app(scope_for(path, raw_path), receive, send), timeout=30)  # type: ignore[arg-type]
    [start] = [m for m in messages if m["type"] == "http.response.start"]
    body = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.response.body")
    return int(start["status"]), body


@pytest.fixture
def app(fake_smi: FakeSmi, tmp_path: Path) -> ASGIApp:
    return create_app(build_controller(make_settings(tmp_path / "state", models=FAKE_MODELS)), monitor=False)


def test_the_raw_harness_serves_the_real_file(app: ASGIApp) -> None:
    status, body = asyncio.run(raw_get(app, "/vendor/htmx.min.js", "/vendor/htmx.min.js"))
    assert status == 200 and b"htmx" in body[:2000] and len(body) > 10_000
    status, body = asyncio.run(raw_get(app, "/static/style.css", "/static/style.css"))
    assert status == 200 and len(body) > 0
    status, body = asyncio.run(raw_get(app, "/vendor/nope.js", "/vendor/nope.js"))
    assert status == 404 and b"[project]" not in body


@pytest.mark.parametrize("raw", TRAVERSALS)
def test_traversal_is_not_found(app: ASGIApp, raw: str) -> None:
    for path in dict.fromkeys([unquote(raw), raw]):  # as a server decodes it, and left undecoded
        status, body = asyncio.run(raw_get(app, path, raw))
        assert status == 404, (path, status, body[:200])
        assert b"root:" not in body and b"[project]" not in body, path


def test_a_missing_htmx_package_stops_serve_with_a_clear_message(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    from gpuwarden.config import ConfigError
    from gpuwarden.web import assets, server

    assets.check_assets()  # installed: nothing to say
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(assets.AssetMissing, match="django-js-lib-htmx"):
        assets.check_assets()
    with pytest.raises(ConfigError, match="reinstall gpuwarden"):
        server.run_server(None)  # type: ignore[arg-type] - stops before it reads a setting
