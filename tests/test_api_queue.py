"""The queue through the REST API, the dashboard's actions and the server's monitor, on the fake
nvidia-smi with a real foreign process holding a GPU (in process: httpx over the ASGI app)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from gpuwarden.controller import Controller
from gpuwarden.probe.shared import Freshness
from gpuwarden.records import ModelView, Selection
from gpuwarden.waitlist import WaitEntry
from gpuwarden.web.app import Monitor, create_app
from tests.conftest import FakeSmi, wait_for
from tests.test_api import HX, make_controller
from tests.test_web_people import SAME_SITE, password_controller, signed_in

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def served(fake_smi: FakeSmi, tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, Controller]]:
    controller = make_controller(tmp_path)
    app = create_app(controller, monitor=False)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1:8000",
                                 timeout=60) as http:
        yield http, controller
    controller.stop_all()


def gpu_freed(controller: Controller) -> None:
    """The monitor's pass after someone's job ended: a new reading, then the queue."""
    controller.snapshot(Freshness.NOW)
    controller.advance_queue()


async def test_a_load_that_waits_is_queued_with_202_and_starts_when_the_gpu_frees(
        served: tuple[httpx.AsyncClient, Controller], fake_smi: FakeSmi) -> None:
    client, controller = served
    foreign = fake_smi.add_foreign("1", mib=900, name="train.py")
    queued = await client.post("/api/models/alpha/load", json={"gpus": "1", "wait": True,
                                                                "wait_timeout_seconds": 600})
    assert queued.status_code == 202, queued.text
    body = queued.json()
    assert (body["queued"], body["position"], body["model"], body["gpus"], body["state"]) == (True, 1, "alpha",
                                                                                              [1], "waiting")
    assert "train.py" in body["held_by"]["1"] and f"PID {foreign.pid}" in body["held_by"]["1"]
    [listed] = (await client.get("/api/queue")).json()
    assert listed["id"] == body["id"] and listed["owner"] is None and listed["position"] == 1

    refused = await client.post("/api/models/beta/load", json={"gpus": "1"})  # no wait: refused as before
    assert refused.status_code == 409 and "train.py" in refused.json()["detail"]
    gpu_freed(controller)
    assert (await client.get(f"/api/queue/{body['id']}")).json()["state"] == "waiting"

    foreign.kill()
    foreign.wait(10)
    gpu_freed(controller)
    started = (await client.get(f"/api/queue/{body['id']}")).json()
    assert started["state"] == "started" and started["position"] is None
    [alpha] = [m for m in (await client.get("/api/models")).json() if m["name"] == "alpha"]
    assert alpha["gpus"] == [1] and alpha["state"] in ("starting", "running")
    assert (await client.get("/api/queue")).json() == []


async def test_queue_requests_that_cannot_be_understood_are_refused(
        served: tuple[httpx.AsyncClient, Controller], fake_smi: FakeSmi) -> None:
    client, _ = served
    cases = [({"gpus": "1", "wait_timeout_seconds": 60}, 422, "add \\\"wait\\\": true"),
             ({"gpus": "1", "wait": True, "wait_timeout_seconds": 0}, 422, "greater than or equal to 1"),
             ({"gpus": "1", "wait": True, "wait_timeout_seconds": 10**9}, 422, "less than or equal to"),
             ({"gpus": "1", "wait": "yes"}, 422, "valid boolean"),
             ({"gpus": "cpu", "wait": True}, 422, "name the GPUs to wait for"),
             ({"wait": True}, 422, "name the GPUs to wait for"),
             ({"gpus": "9", "wait": True}, 422, "does not exist")]
    for body, status, text in cases:
        response = await client.post("/api/models/alpha/load", json=body)
        assert response.status_code == status, (body, response.text)
        assert text in response.text, (body, response.text)
    assert (await client.post("/api/models/nope/load", json={"gpus": "1", "wait": True})).status_code == 404
    for unknown in ("77", "0", "-3", str(10**20)):
        assert (await client.get(f"/api/queue/{unknown}")).status_code == 404, unknown
        assert (await client.delete(f"/api/queue/{unknown}")).status_code == 404, unknown
        page = await client.post(f"/dashboard/queue/{unknown}/withdraw", headers=HX)
        assert page.status_code == 200 and "no queued load has id" in page.headers["HX-Trigger"]
    assert (await client.get("/api/queue/x")).status_code == 422


async def test_a_waiting_load_is_withdrawn_once(served: tuple[httpx.AsyncClient, Controller],
                                                fake_smi: FakeSmi) -> None:
    client, controller = served
    fake_smi.add_foreign("0", mib=900)
    queued = (await client.post("/api/models/beta/load", json={"gpus": "0", "wait": True})).json()
    assert queued["expires_at"] > queued["requested_at"]  # the wait_timeout_minutes default
    again = await client.post("/api/models/beta/load", json={"gpus": "0", "wait": True})
    assert again.status_code == 409 and "already waits for GPU 0" in again.json()["detail"]
    withdrawn = await client.delete(f"/api/queue/{queued['id']}")
    assert withdrawn.status_code == 200 and withdrawn.json()["state"] == "withdrawn"
    assert (await client.delete(f"/api/queue/{queued['id']}")).status_code == 409
    audit = (await client.get("/api/audit")).json()
    assert [(e["action"], e["result"]) for e in audit[:3]] == [("queue-end", "ok"), ("load", "refused"),
                                                                ("queue", "ok")]
    assert controller.queue_lines() == []


async def test_the_dashboard_offers_to_wait_shows_the_queue_and_withdraws(
        served: tuple[httpx.AsyncClient, Controller], fake_smi: FakeSmi) -> None:
    client, _ = served
    fake_smi.add_foreign("1", mib=900, name="train.py")
    page = (await client.get("/dashboard/refresh", params={"now": "true"})).text
    assert page.count("Wait for GPU 1") == 3 and "Wait for GPU 0" not in page  # one per model, busy GPU only
    assert "Waiting for GPUs" not in page
    response = await client.post("/dashboard/models/gamma/load", data={"gpus": "1", "wait": "true"}, headers=HX)
    toast = json.loads(response.headers["HX-Trigger"])["gw-toast"]
    assert toast["ok"] and toast["message"].startswith("gamma waits for GPU 1 (request ")
    assert "Waiting for GPUs" in response.text and "waiting for GPU 1 · position 1" in response.text
    assert response.text.count("Wait for GPU 1") == 2  # gamma waits already
    entry_id = toast["message"].split("request ")[1].split(")")[0]
    response = await client.post(f"/dashboard/queue/{entry_id}/withdraw", headers=HX)
    assert json.loads(response.headers["HX-Trigger"])["gw-toast"]["message"] == f"Request {entry_id} (gamma) withdrawn"
    assert "Waiting for GPUs" not in response.text
    plain = await client.post(f"/dashboard/queue/{entry_id}/withdraw")  # without HX-Request: not a dashboard action
    assert plain.status_code == 400


def test_the_monitor_starts_a_queued_load_once_the_gpu_frees_and_not_before(fake_smi: FakeSmi,
                                                                             tmp_path: Path) -> None:
    controller = make_controller(tmp_path, refresh_interval_seconds=1)
    foreign = fake_smi.add_foreign("0", mib=900)
    monitor = Monitor(controller, interval_seconds=0.05)

    def alpha() -> ModelView:
        view = controller.model_view("alpha")
        assert view is not None
        return view

    monitor.start()
    try:
        entry = controller.load_or_wait("alpha", Selection.gpus(0), wait_seconds=600)
        assert isinstance(entry, WaitEntry)
        before = fake_smi.calls
        assert wait_for(lambda: fake_smi.calls >= before + 3, timeout=30)  # three readings with the GPU busy
        assert controller.queue.entry(entry.id).waiting and not alpha().loaded
        foreign.kill()
        foreign.wait(10)
        assert wait_for(lambda: alpha().loaded, timeout=30)
        assert alpha().gpu_indexes == (0,)
    finally:
        monitor.stop()
        controller.stop_all()


async def test_with_accounts_a_request_is_its_owners_to_withdraw(fake_smi: FakeSmi, tmp_path: Path) -> None:
    controller = password_controller(tmp_path)
    app = create_app(controller, monitor=False)
    alice, bob, root = [await signed_in(app, name) for name in ("alice", "bob", "root")]
    fake_smi.add_foreign("1", mib=900)
    queued = await alice.post("/api/models/alpha/load", json={"gpus": "1", "wait": True}, headers=SAME_SITE)
    assert queued.status_code == 202 and queued.json()["owner"] == "alice"
    page = (await bob.get("/")).text
    assert 'hx-post="/dashboard/queue/' not in page and "waiting for GPU 1" in page  # seen, not his to withdraw
    refused = await bob.delete(f"/api/queue/{queued.json()['id']}", headers=SAME_SITE)
    assert refused.status_code == 403 and "queued by alice" in refused.json()["detail"]
    assert 'hx-post="/dashboard/queue/' in (await root.get("/")).text
    assert (await root.delete(f"/api/queue/{queued.json()['id']}", headers=SAME_SITE)).json()["state"] == "withdrawn"
    for client in (alice, bob, root):
        await client.aclose()
