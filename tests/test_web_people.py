"""People over HTTP (in process): sign-in, sessions, tokens, ownership, admin-only settings, the
audit trail, Host checks and cross-site refusals on every state-changing route."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gpuwarden.accounts import build_accounts
from gpuwarden.config import ConfigError, load_settings
from gpuwarden.controller import Controller, build_controller
from gpuwarden.people import Actor, Channel
from gpuwarden.web.app import create_app
from tests.conftest import FAKE_MODELS, FakeSmi, make_settings

pytestmark = pytest.mark.anyio
BASE = "http://127.0.0.1:8000"
SAME_SITE = {"Origin": BASE, "Sec-Fetch-Site": "same-origin"}
HX = {"HX-Request": "true", **SAME_SITE}
PASSWORD = "correct horse"
OPERATOR = Actor("operator", admin=True, channel=Channel.CLI, client="cli")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def password_controller(tmp_path: Path, **overrides: Any) -> Controller:
    settings = make_settings(tmp_path / "state", models=FAKE_MODELS, unload_timeout_seconds=3, auth="password",
                             **overrides)
    accounts = build_accounts(settings)
    accounts.add_user(OPERATOR, "root", PASSWORD, admin=True)
    for name in ("alice", "bob"):
        accounts.add_user(OPERATOR, name, PASSWORD, admin=False)
    return build_controller(settings)


@pytest.fixture
async def app_and_controller(fake_smi: FakeSmi, tmp_path: Path) -> AsyncIterator[tuple[Any, Controller]]:
    controller = password_controller(tmp_path)
    yield create_app(controller, monitor=False), controller
    controller.stop_all()


def client_for(app: Any, base_url: str = BASE) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=base_url, timeout=60)


async def signed_in(app: Any, name: str) -> httpx.AsyncClient:
    client = client_for(app)
    response = await client.post("/login", data={"username": name, "password": PASSWORD, "next": "/"},
                                 headers=SAME_SITE)
    assert response.status_code == 303 and response.headers["location"] == "/", response.text
    return client


async def test_without_a_login_nothing_but_the_login_page(app_and_controller: tuple[Any, Controller]) -> None:
    app, controller = app_and_controller
    async with client_for(app) as anonymous:
        api = await anonymous.get("/api/gpus")
        assert api.status_code == 401 and "sign in" in api.json()["detail"]
        assert api.headers["www-authenticate"].startswith("Bearer")
        page = await anonymous.get("/dashboard?x=1")
        assert page.status_code == 303 and page.headers["location"] == "/login?next=%2Fdashboard%3Fx%3D1"
        fragment = await anonymous.get("/dashboard/refresh", headers={"HX-Request": "true"})
        assert fragment.status_code == 401 and fragment.headers["hx-redirect"] == "/login"
        for method, path in (("POST", "/api/models/alpha/load"), ("POST", "/dashboard/models/alpha/load"),
                             ("PUT", "/api/settings"), ("POST", "/api/models/alpha/unload")):
            response = await anonymous.request(method, path, json={"gpus": "0"}, headers=HX)
            assert response.status_code == 401, (path, response.status_code)
        assert (await anonymous.get("/login")).status_code == 200
        assert (await anonymous.get("/static/style.css")).status_code == 200
        bad_token = await anonymous.get("/api/gpus", headers={"Authorization": "Bearer gwt_forged"})
        assert bad_token.status_code == 401
        for machine_path in ("/metrics", "/events", "/api/gpus/history"):  # programs get 401, not a login page
            answer = await anonymous.get(machine_path)
            assert answer.status_code == 401 and answer.headers["www-authenticate"].startswith("Bearer"), machine_path
        assert (await anonymous.get("/docs")).status_code == 303  # a person's page: to the login
    assert all(not view.loaded for view in controller.models())
    denied = [e for e in build_accounts(controller.settings).recent(100) if e.action.value == "denied"]
    assert len(denied) == 4 and all("not signed in" in (e.detail or "") for e in denied)


async def test_session_cookie_and_logout(app_and_controller: tuple[Any, Controller]) -> None:
    app, _ = app_and_controller
    client = client_for(app)
    wrong = await client.post("/login", data={"username": "alice", "password": "nope nope"}, headers=SAME_SITE)
    assert wrong.status_code == 401 and "wrong user name or password" in wrong.text
    response = await client.post("/login", data={"username": "alice", "password": PASSWORD,
                                                 "next": "//evil.example/"}, headers=SAME_SITE)
    assert response.status_code == 303 and response.headers["location"] == "/"  # never off-site
    cookie = response.headers["set-cookie"].lower()
    for attribute in ("gpuwarden_session=", "httponly", "samesite=strict", "path=/", "max-age=604800"):
        assert attribute in cookie
    me = (await client.get("/api/me")).json()
    assert me == {"user": "alice", "admin": False, "auth": "password", "may_change_settings": False}
    page = await client.get("/")
    assert page.status_code == 200 and "alice" in page.text and 'id="logout-button"' in page.text
    value = client.cookies["gpuwarden_session"]
    client.cookies.set("gpuwarden_session", value[:-2] + ("AA" if not value.endswith("AA") else "BB"))
    assert (await client.get("/api/me")).status_code == 401  # a tampered cookie is no session
    client.cookies.set("gpuwarden_session", value)
    out = await client.post("/logout", headers=SAME_SITE)
    assert out.status_code == 303 and out.headers["location"] == "/login"
    client.cookies.set("gpuwarden_session", value)  # replaying the old cookie: the session has ended
    assert (await client.get("/api/me")).status_code == 401
    await client.aclose()


async def test_logins_are_throttled(app_and_controller: tuple[Any, Controller]) -> None:
    app, _ = app_and_controller
    async with client_for(app) as client:
        for _ in range(5):
            assert (await client.post("/login", data={"username": "bob", "password": "guess guess"},
                                      headers=SAME_SITE)).status_code == 401
        throttled = await client.post("/login", data={"username": "bob", "password": PASSWORD}, headers=SAME_SITE)
        assert throttled.status_code == 429 and int(throttled.headers["retry-after"]) > 0
        assert "too many failed logins" in throttled.text


async def test_owners_and_admins_unload_and_everything_is_audited(
        app_and_controller: tuple[Any, Controller]) -> None:
    app, controller = app_and_controller
    alice, root = await signed_in(app, "alice"), await signed_in(app, "root")
    bob_token = build_accounts(controller.settings).new_token(OPERATOR, "bob")
    bob = client_for(app)
    bob.headers["Authorization"] = f"Bearer {bob_token}"
    loaded = await alice.post("/api/models/alpha/load", json={"gpus": "0"}, headers=SAME_SITE)
    assert loaded.status_code == 200 and loaded.json()["owner"] == "alice"
    refused = await bob.post("/api/models/alpha/unload")
    assert refused.status_code == 403 and "loaded by alice" in refused.json()["detail"]
    page = await bob.post("/dashboard/models/alpha/unload", headers={"HX-Request": "true"})
    assert "only its owner or an admin" in page.text
    assert next(v for v in controller.models() if v.name == "alpha").loaded
    assert (await bob.put("/api/settings", json={"memory_threshold_mib": 10_000_000})).status_code == 403
    assert controller.runtime.memory_threshold_mib == 30
    assert (await root.put("/api/settings", json={"memory_threshold_mib": 100}, headers=SAME_SITE)).status_code == 200
    assert (await root.post("/api/models/alpha/unload", headers=SAME_SITE)).status_code == 200
    trail = (await root.get("/api/audit", params={"limit": 50})).json()
    seen = [(e["action"], e["result"], e["user"]) for e in reversed(trail)]
    for expected in (("login", "ok", "alice"), ("load", "ok", "alice"), ("unload", "refused", "bob"),
                     ("settings", "refused", "bob"), ("settings", "ok", "root"), ("unload", "ok", "root")):
        assert expected in seen, (expected, seen)
    assert seen.index(("load", "ok", "alice")) < seen.index(("unload", "refused", "bob")) < seen.index(
        ("unload", "ok", "root"))
    unload = next(e for e in trail if e["action"] == "unload" and e["result"] == "ok")
    assert unload["model"] == "alpha" and unload["gpus"] == [0] and unload["client"] == "127.0.0.1"
    assert (await alice.get("/api/audit", params={"limit": 0})).status_code == 422
    for client in (alice, root, bob):
        await client.aclose()


async def test_the_dashboard_shows_owners_and_what_the_viewer_may_do(
        app_and_controller: tuple[Any, Controller]) -> None:
    app, controller = app_and_controller
    controller.load("alpha", None, actor=Actor("alice", admin=False, channel=Channel.WEB))
    bob = await signed_in(app, "bob")
    page = (await bob.get("/")).text
    assert "by alice" in page and "alpha was loaded by alice: only its owner or an admin can unload it" in page
    assert 'hx-post="/dashboard/models/alpha/unload"' not in page  # no enabled unload for bob
    assert "only an admin can change settings" in page and 'id="activity"' in page
    await bob.aclose()
    alice = await signed_in(app, "alice")
    assert 'hx-post="/dashboard/models/alpha/unload"' in (await alice.get("/")).text
    await alice.aclose()


STATE_CHANGING = [("POST", "/api/models/beta/load"), ("POST", "/api/models/alpha/unload"), ("PUT", "/api/settings"),
                  ("POST", "/dashboard/models/beta/load"), ("POST", "/dashboard/models/alpha/unload"),
                  ("POST", "/dashboard/settings"), ("POST", "/logout"), ("POST", "/login"),
                  ("DELETE", "/api/queue/1"), ("POST", "/dashboard/queue/1/withdraw")]
ENCODINGS: dict[str, dict[str, Any]] = {
    "form": {"data": {"gpus": "1", "memory_threshold_mib": "999999", "username": "root", "password": PASSWORD}},
    "text": {"content": b"gpus=1", "headers": {"Content-Type": "text/plain"}},
    "multipart": {"files": {"gpus": (None, "1")}},
    "empty": {},
    "json": {"json": {"gpus": "1", "memory_threshold_mib": 999999}},
}
CROSS_SITE = {"origin": {"Origin": "http://evil.example"}, "fetch-site": {"Sec-Fetch-Site": "cross-site"},
              "other-port": {"Origin": "http://127.0.0.1:9999", "Sec-Fetch-Site": "same-site"}}


async def test_cross_site_requests_never_succeed(app_and_controller: tuple[Any, Controller]) -> None:
    app, controller = app_and_controller
    controller.load("alpha", None, actor=Actor("root", admin=True, channel=Channel.WEB))
    root = await signed_in(app, "root")
    attempts = succeeded = 0
    for method, path in STATE_CHANGING:
        for encoding in ENCODINGS.values():
            for site in CROSS_SITE.values():
                headers = {**site, "HX-Request": "true", **encoding.get("headers", {})}
                options = {key: value for key, value in encoding.items() if key != "headers"}
                response = await root.request(method, path, headers=headers, **options)
                attempts += 1
                succeeded += response.status_code != 403
    assert (attempts, succeeded) == (len(STATE_CHANGING) * len(ENCODINGS) * len(CROSS_SITE), 0)
    assert [v.name for v in controller.models() if v.loaded] == ["alpha"]
    assert controller.runtime.memory_threshold_mib == 30
    assert (await root.get("/api/me")).status_code == 200  # the cross-site logout did not end the session
    await root.aclose()


async def test_a_refused_cross_site_request_names_the_session_it_came_with(
        app_and_controller: tuple[Any, Controller]) -> None:
    app, _ = app_and_controller
    alice, stranger, root = await signed_in(app, "alice"), client_for(app), await signed_in(app, "root")
    forged = client_for(app)
    forged.cookies.set("gpuwarden_session", "not-signed-here")  # a cookie gpuwarden never signed names nobody
    for client in (alice, stranger, forged):
        assert (await client.post("/api/models/alpha/load", json={"gpus": "0"},
                                  headers=CROSS_SITE["other-port"])).status_code == 403
    trail = (await root.get("/api/audit", params={"limit": 3})).json()
    details = [entry["detail"] for entry in reversed(trail)]
    assert details[0] == ("cross-site request refused (Sec-Fetch-Site: same-site), sent with alice's session:"
                          " POST /api/models/alpha/load")
    assert details[1] == details[2] == ("cross-site request refused (Sec-Fetch-Site: same-site):"
                                        " POST /api/models/alpha/load")
    assert all(entry["user"] is None and entry["action"] == "denied" for entry in trail)
    for client in (alice, stranger, forged, root):
        await client.aclose()


async def test_host_names_per_bind(fake_smi: FakeSmi, tmp_path: Path) -> None:
    ipv6 = create_app(password_controller(tmp_path / "a", host="::1"), monitor=False)
    async with client_for(ipv6, "http://[::1]:8000") as client:
        assert (await client.get("/login")).status_code == 200
        assert (await client.get("/login", headers={"Host": "evil.example:8000"})).status_code == 400
    lan = create_app(password_controller(tmp_path / "b", host="0.0.0.0", allowed_hosts=["gpu-box"]), monitor=False)
    async with client_for(lan, "http://gpu-box:8000") as client:
        assert (await client.get("/login")).status_code == 200
        assert (await client.get("/login", headers={"Host": "rebound.evil.example"})).status_code == 400
    with pytest.raises(ConfigError, match="users add"):
        create_app(build_controller(make_settings(tmp_path / "c", host="0.0.0.0")), monitor=False)


async def test_a_link_from_another_site_reloads_the_login_page_once(app_and_controller: tuple[Any, Controller]) -> None:
    app, _ = app_and_controller
    async with client_for(app) as client:
        followed = await client.get("/login?next=%2F", headers={"Sec-Fetch-Site": "cross-site"})
        assert followed.status_code == 200 and '<meta http-equiv="refresh" content="0">' in followed.text
        reloaded = await client.get("/login?next=%2F", headers={"Sec-Fetch-Site": "same-origin"})
        assert "http-equiv" not in reloaded.text  # no loop when nobody is signed in
    alice = await signed_in(app, "alice")
    again = await alice.get("/login?next=%2Fdashboard", headers={"Sec-Fetch-Site": "same-origin"})
    assert again.status_code == 303 and again.headers["location"] == "/dashboard"
    await alice.aclose()


async def test_no_page_can_be_framed_and_odd_headers_are_refused_not_crashed(
        app_and_controller: tuple[Any, Controller]) -> None:
    app, _ = app_and_controller
    async with client_for(app) as client:
        for response in (await client.get("/login"), await client.get("/api/gpus"),
                         await client.get("/", headers={"Host": "evil.example"}),
                         await client.post("/logout", headers={"Origin": "http://evil.example"})):
            assert response.headers["x-frame-options"] == "DENY", response.status_code
            assert response.headers["content-security-policy"] == "frame-ancestors 'none'"
        assert (await client.post("/logout", headers={"Origin": "http://["})).status_code == 403
        planted = {"Cookie": "gpuwarden_session=a.\u00e9".encode()}  # set by a page on another port
        assert (await client.get("/api/me", headers=planted)).status_code == 401
        assert (await client.get("/login", headers=planted)).status_code == 200


async def test_a_flood_of_sign_ins_is_turned_away(app_and_controller: tuple[Any, Controller],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from gpuwarden.web import login

    app, _ = app_and_controller
    monkeypatch.setattr(login, "MAX_WAITING_LOGINS", 0)
    async with client_for(app) as client:
        busy = await client.post("/login", data={"username": "bob", "password": PASSWORD}, headers=SAME_SITE)
        assert busy.status_code == 503 and busy.headers["retry-after"] == "5" and "too many sign-ins" in busy.text


def test_forwarded_headers_are_believed_from_trusted_proxies_only(tmp_path: Path) -> None:
    from gpuwarden.web.server import proxy_options

    assert proxy_options(make_settings(tmp_path)) == {"proxy_headers": False}
    trusted = make_settings(tmp_path, trusted_proxies=["127.0.0.1", "10.0.0.0/8"])
    assert proxy_options(trusted) == {"proxy_headers": True, "forwarded_allow_ips": "127.0.0.1,10.0.0.0/8"}
    with pytest.raises(ConfigError, match="not an IP address"):
        load_settings(None, environ={"GPUWARDEN_TRUSTED_PROXIES": "gpu-box"})
