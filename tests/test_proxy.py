"""The model proxy (web/proxy.py): /models/NAME/... reaches the running model's server, streamed,
without gpuwarden's credentials; a model that is not running gets 503 with its state. Through a real
uvicorn server in this process and a real model (the demo model server) launched by gpuwarden."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from starlette.requests import Request

from gpuwarden.accounts import build_accounts
from gpuwarden.controller import Controller, build_controller
from gpuwarden.people import Actor, Channel
from gpuwarden.records import parse_selection
from gpuwarden.web.app import create_app
from gpuwarden.web.proxy import forwarded_headers, request_body, rewritten_location, upstream_url
from tests.conftest import FakeSmi, free_port, make_settings, wait_for

ECHO = {"name": "echo", "command": [sys.executable, "-m", "gpuwarden.demo.model_server", "--port", "{port}",
                                    "--startup-seconds", "0"],
        "health_url": "http://127.0.0.1:{port}/health", "startup_timeout_seconds": 60}
OPERATOR = Actor("operator", admin=True, channel=Channel.CLI, client="cli")
PORTLESS = {"name": "portless", "command": [sys.executable, "-m", "gpuwarden.demo.model_server"],
            "startup_grace_seconds": 0.2}


@pytest.fixture(params=["none"])
def served(request: pytest.FixtureRequest, fake_smi: FakeSmi, tmp_path: Path) -> Iterator[tuple[str, Controller]]:
    """gpuwarden's app under uvicorn in a thread (streaming is real only over a socket)."""
    settings = make_settings(tmp_path / "state", models=[ECHO, PORTLESS], unload_timeout_seconds=5, auth=request.param)
    if request.param == "password":
        build_accounts(settings).add_user(OPERATOR, "alice", "correct horse", admin=False)
    controller = build_controller(settings)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(controller, monitor=False), host="127.0.0.1", port=port,
                                           log_level="warning", proxy_headers=False))  # as `serve` runs it
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    assert wait_for(lambda: server.started, 30)
    try:
        yield f"http://127.0.0.1:{port}", controller
    finally:
        server.should_exit = True
        thread.join(15)
        controller.stop_all()


def running(controller: Controller, name: str) -> None:
    controller.load(name, parse_selection("0"))

    def state() -> str:
        controller.reconcile()
        return next(view.state.value for view in controller.models() if view.name == name)

    assert wait_for(lambda: state() == "running", 60), state()


def test_a_model_that_is_not_running_answers_503_with_its_state(served: tuple[str, Controller]) -> None:
    base, controller = served
    with httpx.Client(base_url=base, timeout=30) as http:
        answer = http.get("/models/echo/v1/models")
        assert answer.status_code == 503 and answer.json()["state"] == "not_loaded"
        assert "model echo is not running (state: not loaded)" in answer.json()["detail"]
        assert http.get("/models/nope/").status_code == 404
        redirect = http.get("/models/echo")
        assert redirect.status_code == 307 and redirect.headers["location"] == "/models/echo/"
        running(controller, "portless")
        assert "its command has no {port}" in http.get("/models/portless/").json()["detail"]


def test_requests_reach_the_model_without_gpuwarden_s_credentials(served: tuple[str, Controller]) -> None:
    base, controller = served
    running(controller, "echo")
    before = controller.clock()
    with httpx.Client(base_url=base, timeout=30) as http:
        root = http.get("/models/echo/")
        assert root.status_code == 200 and root.json()["model"] == "echo" and root.json()["cuda_visible_devices"] == "0"
        prompt = "x" * 100_000  # above the API's 64 KiB: a model's requests may be larger
        echoed = http.post("/models/echo/echo?stream=false", content=prompt,
                           headers={"Authorization": "Bearer sk-the-model-s-own-key",
                                    "Cookie": "gpuwarden_session=secret; theme=dark",
                                    "X-Forwarded-For": "10.6.6.6",
                                    "X-Echo-Set-Cookie": "gpuwarden_session=tossed; Path=/",
                                    "X-Echo-Content-Security-Policy": "default-src *"})
    assert echoed.status_code == 200, echoed.text
    assert "set-cookie" not in echoed.headers  # a model cannot set cookies on gpuwarden's origin
    assert echoed.headers.get_list("content-security-policy") == [
        "sandbox allow-scripts allow-downloads; frame-ancestors 'none'"]
    seen = echoed.json()
    assert (seen["method"], seen["path"], len(seen["body"])) == ("POST", "/echo?stream=false", 100_000)
    assert seen["headers"]["authorization"] == "Bearer sk-the-model-s-own-key"  # not gpuwarden's: passed on
    assert "cookie" not in seen["headers"]  # no cookie reaches a model: gpuwarden's, or other apps' on this host
    assert seen["headers"]["x-forwarded-prefix"] == "/models/echo"
    assert seen["headers"]["x-forwarded-for"] == "127.0.0.1"  # gpuwarden's own, not the client's claim
    assert seen["headers"]["host"].startswith("127.0.0.1:")
    assert wait_for(lambda: not controller.requests.serving("echo"), 10)  # ended with its answer's last byte
    last = controller.requests.last("echo")
    assert last is not None and before <= last


def test_a_streamed_answer_is_passed_on_as_it_comes(served: tuple[str, Controller]) -> None:
    base, controller = served
    running(controller, "echo")
    arrivals = []
    started = time.monotonic()
    with httpx.Client(base_url=base, timeout=30) as http, http.stream("GET", "/models/echo/stream?words=10") as answer:
        assert answer.status_code == 200 and answer.headers.get("content-length") is None
        text = ""
        for chunk in answer.iter_text():
            arrivals.append(time.monotonic() - started)
            text += chunk
    assert text == "".join(f"word{n} " for n in range(10))
    assert arrivals[0] < arrivals[-1] - 0.5, arrivals  # the first words came long before the last


@pytest.mark.parametrize("served", ["password"], indirect=True)
def test_with_accounts_a_gpuwarden_token_lets_one_in_and_stays_with_gpuwarden(served: tuple[str, Controller]) -> None:
    base, controller = served
    running(controller, "echo")
    token = build_accounts(controller.settings).new_token(OPERATOR, "alice")
    with httpx.Client(base_url=base, timeout=30) as http:
        refused = http.post("/models/echo/echo", content="hi", headers={"Authorization": "Bearer sk-model-key"})
        assert refused.status_code == 401 and "sign in first" in refused.json()["detail"]  # the model's key is no pass
        assert http.post("/models/echo/echo", headers={"Authorization": "Bearer gwt_forged"}).status_code == 401
        echoed = http.post("/models/echo/echo", content="hi", headers={"Authorization": f"Bearer {token}"})
    assert echoed.status_code == 200, echoed.text
    assert "authorization" not in echoed.json()["headers"]  # the token never reaches the model


def test_the_model_gets_the_path_as_sent_and_no_header_the_proxy_made_up() -> None:
    scope = {"type": "http", "method": "GET", "scheme": "http", "path": "/models/m/a?b#c/d",
             "raw_path": b"/models/m/a%3Fb%23c%2Fd", "query_string": b"", "client": ("127.0.0.1", 5000),
             "headers": [(b"host", b"127.0.0.1:8000"), (b"forwarded", b"for=10.6.6.6"), (b"x-real-ip", b"10.6.6.6")]}
    request = Request(scope)
    assert str(upstream_url(request, "m", 9000)) == "http://127.0.0.1:9000/a%3Fb%23c%2Fd"  # no stray "?"
    scope_with_query = {**scope, "raw_path": b"/models/m/v1/x", "query_string": b"q=1&r=%20"}
    assert str(upstream_url(Request(scope_with_query), "m", 9000)) == "http://127.0.0.1:9000/v1/x?q=1&r=%20"
    headers = dict(forwarded_headers(request, "m"))
    assert headers["accept-encoding"] == "identity"  # never a compressed answer the client did not ask for
    assert "forwarded" not in headers and "x-real-ip" not in headers and "user-agent" not in headers
    assert request_body(request) is None  # no length, not chunked: no body, whatever the method


def test_a_redirect_to_the_models_own_paths_stays_behind_the_proxy(served: tuple[str, Controller]) -> None:
    base, controller = served
    running(controller, "echo")
    view = controller.model_view("echo")
    assert view is not None and view.port is not None
    with httpx.Client(base_url=base, timeout=30) as http:
        for sent, seen in (("/docs/", "/models/echo/docs/"),
                           (f"http://127.0.0.1:{view.port}/v1?x=1", "/models/echo/v1?x=1"),
                           ("next", "next"), ("https://example.org/a", "https://example.org/a")):
            answer = http.post("/models/echo/echo", content=b"", headers={"X-Echo-Location": sent})
            assert answer.headers["location"] == seen, sent


@pytest.mark.parametrize(("location", "expected"), [
    (b"/", b"/models/m/"), (b"/a/b?c=d", b"/models/m/a/b?c=d"), (b"http://127.0.0.1:9000", b"/models/m/"),
    (b"http://LOCALHOST:9000/x", b"/models/m/x"), (b"http://127.0.0.1:9000?q", b"/models/m/?q"),
    (b"//evil.example/x", b"//evil.example/x"), (b"http://127.0.0.1:90001/x", b"http://127.0.0.1:90001/x"),
    (b"http://127.0.0.1:9000@evil.example/", b"http://127.0.0.1:9000@evil.example/"), (b"rel", b"rel"),
    (b"http://127.0.0.1:9000#top", b"/models/m/#top"),
    (b"/../../api/me", b"/models/m/api/me"), (b"/%2e%2E/api", b"/models/m/api"),
    (b"/a/./b/../c?x=/../y", b"/models/m/a/c?x=/../y"),
    (b"/models/m/x", b"/models/m/x"), (b"/models/m", b"/models/m"), (b"/models/mm/x", b"/models/m/models/mm/x"),
    (b"/models/m/../../api", b"/models/m/api"), (b"http://127.0.0.1:9000/models/m/docs", b"/models/m/docs")])
def test_redirect_locations(location: bytes, expected: bytes) -> None:
    assert rewritten_location(location, "m", 9000) == expected
