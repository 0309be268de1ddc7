"""Bodies rendered once per change (web/rendered.py): many readers of one state cost one render,
and anything the body shows (a new reading, a change by this process or by another one such as
the CLI, the viewer) gives a new render, never a stale body."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gpuwarden.controller import Controller, build_controller
from gpuwarden.people import Actor, Channel
from gpuwarden.probe.shared import Freshness
from gpuwarden.records import parse_selection
from gpuwarden.store import StoreError
from gpuwarden.web.app import create_app
from gpuwarden.web.rendered import DASHBOARD, STATUS, RenderedViews
from tests.conftest import FakeSmi
from tests.test_api import make_controller
from tests.test_web_people import password_controller

pytestmark = pytest.mark.anyio
ROOT = Actor("root", admin=True, channel=Channel.WEB)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def served(fake_smi: FakeSmi, tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, Controller, Any]]:
    controller = make_controller(tmp_path)
    app = create_app(controller, monitor=False)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1:8000",
                                 timeout=60) as http:
        yield http, controller, app
    controller.stop_all()


async def test_many_readers_of_one_state_cost_one_render(
        served: tuple[httpx.AsyncClient, Controller, Any]) -> None:
    http, controller, app = served
    views: RenderedViews = app.state.rendered
    documents = [(await http.get("/api/gpus")).content for _ in range(20)]
    fragments = [await http.get("/dashboard/refresh", params={"probe": "false"}) for _ in range(20)]
    assert views.renders() == {STATUS: 1, DASHBOARD: 1}
    assert len(set(documents)) == 1 and json.loads(documents[0]) == controller.status().to_dict()
    assert len({fragment.content for fragment in fragments}) == 1
    assert all(f.headers["content-type"] == "text/html; charset=utf-8" for f in fragments)
    assert all(abs(int(f.headers["x-gpuwarden-time"]) / 1000 - controller.clock().timestamp()) < 60 for f in fragments)
    metrics = (await http.get("/metrics")).text
    assert 'gpuwarden_renders_total{view="dashboard"} 1.0' in metrics


async def test_readers_arriving_together_share_one_render(
        served: tuple[httpx.AsyncClient, Controller, Any]) -> None:
    """A change pushed to every open dashboard: they all ask at once, before any render finished."""
    http, _, app = served
    answers = await asyncio.gather(*(http.get("/dashboard/refresh", params={"probe": "false"}) for _ in range(30)),
                                   *(http.get("/api/gpus") for _ in range(30)))
    assert {answer.status_code for answer in answers} == {200}
    assert len({answer.content for answer in answers[:30]}) == 1
    assert app.state.rendered.renders() == {STATUS: 1, DASHBOARD: 1}


async def test_a_new_reading_and_a_change_here_are_rendered_anew(
        served: tuple[httpx.AsyncClient, Controller, Any], fake_smi: FakeSmi) -> None:
    http, _, app = served
    first = (await http.get("/api/gpus")).json()
    fake_smi.add_foreign("1", mib=900)
    refreshed = (await http.get("/api/gpus", params={"refresh": "true"})).json()
    assert first["gpu_status"][1]["state"] == "idle" and refreshed["gpu_status"][1]["state"] == "occupied_by_others"
    assert (await http.get("/api/gpus")).json() == refreshed  # the cached answer is the latest reading's
    assert (await http.post("/api/models/alpha/load", json={"gpus": "0"})).status_code == 200
    after_load = (await http.get("/api/gpus")).json()
    assert after_load["gpu_status"][0]["model_name"] == "alpha"
    assert "alpha" in (await http.get("/dashboard/refresh", params={"probe": "false"})).text
    assert app.state.rendered.renders()[STATUS] == 3


async def test_a_change_by_another_process_is_seen_at_once(
        served: tuple[httpx.AsyncClient, Controller, Any], tmp_path: Path) -> None:
    """The CLI acts on the same database through a store of its own: the server's next answer shows
    it, without waiting for its own supervision to notice."""
    http, controller, _ = served
    before = (await http.get("/api/gpus")).json()
    fragment_before = (await http.get("/dashboard/refresh", params={"probe": "false"})).text
    assert before["gpu_status"][0]["state"] == "idle"
    cli = build_controller(controller.settings)
    cli.load("alpha", parse_selection("0"), actor=Actor("carol", admin=False, channel=Channel.CLI))
    snapshot = controller.snapshot(Freshness.CACHED)
    assert (await http.get("/api/gpus")).json()["gpu_status"][0]["model_name"] == "alpha"
    assert controller.snapshot(Freshness.CACHED) is snapshot  # the same reading: the database told
    fragment = (await http.get("/dashboard/refresh", params={"probe": "false"})).text
    assert fragment != fragment_before and "carol" in fragment
    cli.unload("alpha")


async def test_each_viewer_has_a_body_of_their_own(fake_smi: FakeSmi, tmp_path: Path) -> None:
    controller = password_controller(tmp_path)
    views = RenderedViews(controller, create_app(controller, monitor=False).state.accounts)
    controller.load("alpha", parse_selection("0"), actor=ROOT)
    snapshot = controller.snapshot()
    alice = Actor("alice", admin=False, channel=Channel.WEB)
    for_root, for_alice = views.dashboard_body(snapshot, ROOT), views.dashboard_body(snapshot, alice)
    assert views.dashboard_body(snapshot, ROOT) is for_root and views.renders()[DASHBOARD] == 2
    unload = b'hx-post="/dashboard/models/alpha/unload"'
    assert unload in for_root and unload not in for_alice  # root's model: alice may not unload it
    controller.stop_all()


async def test_a_busy_database_means_a_render_not_a_stale_body(
        fake_smi: FakeSmi, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    controller = make_controller(tmp_path)
    views = RenderedViews(controller, create_app(controller, monitor=False).state.accounts)
    snapshot = controller.snapshot()
    monkeypatch.setattr(controller.store, "data_version", lambda: None)
    assert views.basis(STATUS, snapshot) is None and views.cached(None) is None
    views.status_body(snapshot)
    views.status_body(snapshot)
    assert views.renders()[STATUS] == 2


async def test_a_body_rendered_while_the_database_fails_is_not_kept(
        fake_smi: FakeSmi, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    controller = make_controller(tmp_path)
    views = RenderedViews(controller, create_app(controller, monitor=False).state.accounts)
    snapshot = controller.snapshot()
    guest = Actor(None, admin=False, channel=Channel.WEB)

    def unreadable() -> Any:
        raise StoreError("state database is busy or locked (database is locked)")

    monkeypatch.setattr(controller.store, "read", unreadable)
    degraded = [views.status_body(snapshot), views.status_body(snapshot)]
    fragments = [views.dashboard_body(snapshot, guest), views.dashboard_body(snapshot, guest)]
    assert b"model placements unknown" in degraded[0] and b"State database problem" in fragments[0]
    assert views.renders() == {STATUS: 2, DASHBOARD: 2}  # a passing trouble is never served from the cache
    monkeypatch.undo()
    assert b"model placements unknown" not in views.status_body(snapshot)
    views.status_body(snapshot)
    assert views.renders()[STATUS] == 3


async def test_the_lean_routes_refuse_what_fastapi_would_and_stay_documented(
        served: tuple[httpx.AsyncClient, Controller, Any]) -> None:
    http, _, _ = served
    for path, flag in (("/api/gpus", "refresh"), ("/dashboard/refresh", "probe"), ("/dashboard/refresh", "now")):
        refused = await http.get(path, params={flag: "maybe<script>"})
        assert refused.status_code == 422 and refused.json()["detail"][0]["loc"] == ["query", flag]
        assert "maybe" not in refused.text  # the input is never echoed
        for word in ("true", "FALSE", "1", "off", " yes "):
            assert (await http.get(path, params={flag: word})).status_code == 200, (path, flag, word)
    schema = (await http.get("/openapi.json")).json()
    operation = schema["paths"]["/api/gpus"]["get"]
    assert [p["name"] for p in operation["parameters"]] == ["refresh"]
    assert "/dashboard/refresh" not in schema["paths"]
    assert (await http.head("/api/gpus")).status_code == (await http.head("/api/models")).status_code == 405
