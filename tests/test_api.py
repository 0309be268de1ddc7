"""REST API and dashboard endpoints, in process (httpx over the ASGI app)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gpuwarden.controller import Controller, build_controller
from gpuwarden.records import parse_selection
from gpuwarden.web.app import create_app
from tests.conftest import FAKE_MODELS, FakeSmi, make_settings

HX = {"HX-Request": "true"}


def make_controller(tmp_path: Path, **overrides: Any) -> Controller:
    return build_controller(make_settings(tmp_path / "state", models=FAKE_MODELS, unload_timeout_seconds=3,
                                          **overrides))


@pytest.fixture
async def client(fake_smi: FakeSmi, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(make_controller(tmp_path), monitor=False)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1:8000",
                                 timeout=60) as http:
        yield http


pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_gpus_document(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/gpus")
    assert response.status_code == 200
    document = response.json()
    assert document["total_gpus"] == 2 and [g["state"] for g in document["gpu_status"]] == ["idle", "idle"]


async def test_concurrent_refreshes_share_nvidia_smi_runs(client: httpx.AsyncClient, fake_smi: FakeSmi) -> None:
    await client.get("/api/gpus")
    before = fake_smi.calls
    fake_smi.set_delay(0.8)
    responses = await asyncio.gather(*(client.get("/api/gpus", params={"refresh": "true"}) for _ in range(20)))
    assert all(r.status_code == 200 for r in responses)
    assert 1 <= fake_smi.calls - before <= 2
    before = fake_smi.calls
    await asyncio.gather(*(client.get("/api/gpus") for _ in range(30)))  # cached: no run at all
    assert fake_smi.calls == before


async def test_load_unload_and_error_codes(client: httpx.AsyncClient, fake_smi: FakeSmi) -> None:
    claimed = await client.post("/api/models/alpha/load", json={"gpus": "0", "requested_by": "alice"})
    assert claimed.status_code == 422 and "no longer accepted" in claimed.text  # who asks is not free text
    loaded = await client.post("/api/models/alpha/load", json={"gpus": "0"})
    assert loaded.status_code == 200, loaded.text
    body = loaded.json()
    assert body["name"] == "alpha" and body["gpus"] == [0] and body["state"] == "starting"
    assert body["owner"] is None  # auth = "none": an anonymous caller
    gpus = (await client.get("/api/gpus")).json()["gpu_status"]
    assert (gpus[0]["state"], gpus[0]["model_name"]) == ("model_loaded", "alpha")

    conflict = await client.post("/api/models/beta/load", json={"gpus": [0, 1]})
    assert conflict.status_code == 409 and "GPU 0 holds model alpha" in conflict.json()["detail"]

    foreign = fake_smi.add_foreign("1", mib=500, name="train.py")
    occupied = await client.post("/api/models/beta/load", json={"gpus": "1"})
    assert occupied.status_code == 409
    assert f"PID {foreign.pid}" in occupied.json()["detail"] and "train.py" in occupied.json()["detail"]

    assert (await client.post("/api/models/nope/load", json={"gpus": "0"})).status_code == 404
    for bad in ({"gpus": "0,0"}, {"gpus": "x"}, {"gpus": ""}, {"gpus": "7"}, {"gpus": {"a": 1}}, {"rm": 1}):
        response = await client.post("/api/models/beta/load", json=bad)
        assert response.status_code == 422, (bad, response.text)
    assert (await client.post("/api/models/beta/load", content=b"{not json",
                              headers={"Content-Type": "application/json"})).status_code == 422

    models = {m["name"]: m for m in (await client.get("/api/models")).json()}
    assert models["alpha"]["state"] in ("starting", "running") and models["beta"]["state"] == "not_loaded"
    assert models["alpha"]["pid"] and models["alpha"]["started_at"]

    unloaded = await client.post("/api/models/alpha/unload")
    assert unloaded.status_code == 200 and unloaded.json()["state"] == "stopped"
    assert (await client.post("/api/models/alpha/unload")).status_code == 409
    assert (await client.post("/api/models/nope/unload")).status_code == 404
    gpus = (await client.get("/api/gpus")).json()["gpu_status"]
    assert gpus[0]["state"] == "idle"


async def test_settings_are_validated_and_persisted(client: httpx.AsyncClient, fake_smi: FakeSmi,
                                                    tmp_path: Path) -> None:
    assert (await client.get("/api/settings")).json() == {"memory_threshold_mib": 30, "refresh_interval_seconds": 300}
    fake_smi.set_gpus(2, base_used=100)
    assert (await client.get("/api/gpus", params={"refresh": "true"})).json()["gpu_status"][0]["state"] == (
        "occupied_by_others")
    changed = await client.put("/api/settings", json={"memory_threshold_mib": 200, "refresh_interval_seconds": 60})
    assert changed.json() == {"memory_threshold_mib": 200, "refresh_interval_seconds": 60}
    assert (await client.get("/api/gpus")).json()["gpu_status"][0]["state"] == "idle"
    for bad in ({"memory_threshold_mib": -1}, {"refresh_interval_seconds": 0}, {"other": 1},
                {"memory_threshold_mib": "x"}):
        assert (await client.put("/api/settings", json=bad)).status_code == 422
    fragment = (await client.get("/dashboard/refresh")).text
    assert 'hx-trigger="every 60s"' in fragment and "Auto-refresh: Active (1m)" in fragment
    restarted = make_controller(tmp_path)  # a restart keeps them
    assert restarted.runtime.to_dict() == {"memory_threshold_mib": 200, "refresh_interval_seconds": 60}


async def test_dashboard_page_and_fragments(client: httpx.AsyncClient) -> None:
    page = await client.get("/")
    assert page.status_code == 200
    text = page.text
    assert "Total GPUs: 2" in text and "Auto-refresh: Active (5m)" in text
    assert 'hx-get="/dashboard/refresh"' in text and 'hx-trigger="every 300s"' in text
    assert text.count('class="gpu-btn') == 2 * len(FAKE_MODELS)
    assert '<script src="/vendor/htmx.min.js">' in text and "https://" not in text
    assert (await client.get("/dashboard")).status_code == 200
    js = await client.get("/vendor/htmx.min.js")
    assert js.status_code == 200 and b"htmx" in js.content[:2000]
    assert (await client.get("/vendor/htmx-sse.min.js")).status_code == 404  # no extension: dashboard.js
    assert (await client.get("/vendor/../../etc/passwd")).status_code == 404
    docs = await client.get("/docs")
    assert docs.status_code == 200 and "https://" not in docs.text  # Swagger UI from gpuwarden itself
    assets = re.findall(r'(?:src|href)="(/static-offline-docs/[^"]+)"', docs.text)
    assert len(assets) >= 2
    for url in assets:
        assert (await client.get(url)).status_code == 200, url
    redoc = await client.get("/redoc")
    assert redoc.status_code == 200 and "https://cdn" not in redoc.text
    assert "/api/models/{name}/load" in (await client.get("/openapi.json")).json()["paths"]


async def test_dashboard_actions(client: httpx.AsyncClient, fake_smi: FakeSmi) -> None:
    assert (await client.post("/dashboard/models/alpha/load", data={"gpus": "0"})).status_code == 400  # no HX
    loaded = await client.post("/dashboard/models/alpha/load", data={"gpus": "0"}, headers=HX)
    assert loaded.status_code == 200 and "⚡ GPU 0 (alpha)" in loaded.text
    refused = await client.post("/dashboard/models/beta/load", data={"gpus": "0"}, headers=HX)
    assert refused.status_code == 200 and 'class="error model-error"' in refused.text
    assert "GPU 0 holds model alpha" in refused.text
    several = await client.post("/dashboard/models/gamma/load", data={"gpus": ["0", "1"]}, headers=HX)
    assert "holds model alpha" in several.text
    unloaded = await client.post("/dashboard/models/alpha/unload", headers=HX)
    assert unloaded.status_code == 200 and "⚡ GPU 0" not in unloaded.text
    saved = await client.post("/dashboard/settings", data={"memory_threshold_mib": "abc",
                                                           "refresh_interval_seconds": "10"}, headers=HX)
    assert "memory_threshold_mib must be a whole number" in saved.text


async def test_untrusted_process_names_are_escaped(client: httpx.AsyncClient, fake_smi: FakeSmi) -> None:
    fake_smi.add_foreign("1", mib=500, name="<img src=x onerror=alert(1)>")
    text = (await client.get("/dashboard/refresh")).text
    assert "<img src=x" not in text
    assert "&lt;img src=x onerror=alert(1)&gt;" in text


async def test_dashboard_polls_close_together_share_one_probe(client: httpx.AsyncClient, fake_smi: FakeSmi) -> None:
    await client.get("/dashboard/refresh")
    before = fake_smi.calls
    for _ in range(5):  # five dashboards whose 5-minute polls fall within a few seconds
        assert (await client.get("/dashboard/refresh")).status_code == 200
    assert fake_smi.calls == before
    await client.get("/dashboard/refresh", params={"now": "true"})  # the Refresh button always probes
    assert fake_smi.calls == before + 1


async def test_selection_edges_answer_like_the_rest(client: httpx.AsyncClient, fake_smi: FakeSmi) -> None:
    unknown = await client.post("/api/models/nope/load", json={"gpus": "x"})
    assert unknown.status_code == 404 and "unknown model" in unknown.json()["detail"]  # the model first
    for bad, sentence in (([True], "invalid GPU index True"), ([1.5], "invalid GPU index '1.5'"),
                          (["0", 0], "GPU 0 is selected twice")):
        response = await client.post("/api/models/beta/load", json={"gpus": bad})
        assert response.status_code == 422 and sentence in response.json()["detail"], (bad, response.text)
    for bad in ({"memory_threshold_mib": True}, {"refresh_interval_seconds": 60.0}):
        assert (await client.put("/api/settings", json=bad)).status_code == 422
    assert (await client.get("/api/settings")).json() == {"memory_threshold_mib": 30, "refresh_interval_seconds": 300}
    several = await client.post("/dashboard/models/gamma/load", data={"gpus": " 0,1 "}, headers=HX)
    assert several.status_code == 200 and "⚡ GPU 0 (gamma)" in several.text and "⚡ GPU 1 (gamma)" in several.text
    before = fake_smi.calls
    await client.get("/dashboard/refresh", params={"probe": "false", "now": "true"})  # probe=false wins
    assert fake_smi.calls == before
    await client.post("/dashboard/models/gamma/unload", headers=HX)


async def test_hostile_bodies_get_4xx_never_5xx(client: httpx.AsyncClient) -> None:
    json_headers = {"Content-Type": "application/json"}
    for raw in (b'{"gpus": [NaN]}', b'{"gpus": Infinity}', b'{"gpus": [1e400]}', b'{"requested_by": NaN}',
                b'{"gpus": "0", "extra": -Infinity}'):
        response = await client.post("/api/models/alpha/load", content=raw, headers=json_headers)
        assert response.status_code == 422, (raw, response.status_code, response.text)
    for raw in (b'{"memory_threshold_mib": NaN}', b'{"memory_threshold_mib": 1e400}',
                b'{"refresh_interval_seconds": Infinity}'):
        response = await client.put("/api/settings", content=raw, headers=json_headers)
        assert response.status_code == 422, (raw, response.text)
        assert "NaN" not in response.text and "inf" not in response.text.lower()  # no echo of the input
    huge = b'{"gpus": "0", "extra": "' + b"x" * 2_000_000 + b'"}'
    assert (await client.post("/api/models/alpha/load", content=huge, headers=json_headers)).status_code == 413

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted while read
        for _ in range(100):
            yield b" " * 10_000

    chunked = await client.post("/api/models/alpha/load", content=chunks(), headers=json_headers)
    assert chunked.status_code == 413
    assert (await client.get("/api/models")).json()[0]["state"] == "not_loaded"


async def test_cross_site_requests_are_refused(client: httpx.AsyncClient) -> None:
    # A page on another site can send a "simple" POST (text/plain body) without a preflight...
    simple = await client.post("/api/models/alpha/load", content=b'{"gpus": "0"}',
                               headers={"Content-Type": "text/plain"})
    assert simple.status_code == 422
    # ... or rebind its DNS name to 127.0.0.1; the Host header still names it.
    rebound = await client.get("/api/gpus", headers={"Host": "evil.example:8000"})
    assert rebound.status_code == 400
    assert (await client.get("/api/models")).json()[0]["state"] == "not_loaded"


async def test_models_keep_running_when_the_server_stops_unless_configured(fake_smi: FakeSmi, tmp_path: Path) -> None:
    for stop, expected in ((False, "running"), (True, "stopped")):
        controller = make_controller(tmp_path / str(stop), stop_models_on_exit=stop)
        app = create_app(controller)
        async with app.router.lifespan_context(app):  # the server starts (monitor) and stops
            controller.load("alpha", parse_selection("0"))
            for _ in range(100):
                if controller.models()[0].state == "running":
                    break
                await asyncio.sleep(0.05)
        assert controller.models()[0].state == expected
        if stop is False:
            controller.unload("alpha")


def test_every_domain_error_has_its_http_status() -> None:
    from gpuwarden import errors
    from gpuwarden.web.app import http_status_for

    expected = {"ControllerError": 500, "UnknownModel": 404, "BadSelection": 422, "LoadRefused": 409,
                "NotLoaded": 409, "StateUnavailable": 503, "LaunchFailed": 500, "InvalidSetting": 422,
                "NotAuthenticated": 401, "NotPermitted": 403, "TooManyAttempts": 429, "AccountProblem": 422,
                "GpusBusy": 409, "UnknownWaitRequest": 404, "NotWaiting": 409}
    kinds = {name: kind for name, kind in vars(errors).items()
             if isinstance(kind, type) and issubclass(kind, errors.ControllerError)}
    assert set(kinds) == set(expected)  # a new domain error must be given its status here
    assert {name: http_status_for(kind("x")) for name, kind in kinds.items()} == expected
