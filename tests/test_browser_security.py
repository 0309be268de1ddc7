"""Accounts and the cross-site guard in a real browser: Playwright driving Debian's chromium against
``gpuwarden serve`` (a subprocess, with the fake nvidia-smi on PATH) and an attacker's page served
from another origin."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import FAKE_MODELS, UNDER_WINE, FakeSmi, wait_for

pytestmark = pytest.mark.browser

CHROMIUM = os.environ.get("GPUWARDEN_CHROMIUM", "/usr/bin/chromium")
REQUIRED = os.environ.get("GPUWARDEN_REQUIRE_BROWSER") == "1"

try:
    from playwright.sync_api import Browser, BrowserContext, Page, Response, expect, sync_playwright
except ImportError:  # pragma: no cover
    sync_playwright = None  # type: ignore[assignment]

if UNDER_WINE:  # Wine, not Windows: Playwright's driver does not run there (real Windows runs these)
    pytest.skip("Playwright's driver does not run under Wine", allow_module_level=True)
if sync_playwright is None or not Path(CHROMIUM).exists():
    if REQUIRED:
        raise RuntimeError(f"browser tests required but chromium ({CHROMIUM}) or playwright is missing")
    pytest.skip("chromium or playwright not installed", allow_module_level=True)

from tests.test_browser import Server, free_port, gpu_button, model_card, toml_value  # noqa: E402

PASSWORD = "correct horse"
SESSION_COOKIE = "gpuwarden_session"
DEFAULT_SETTINGS = {"memory_threshold_mib": 30, "refresh_interval_seconds": 300}
SETTINGS_ATTACK = {"memory_threshold_mib": 5000, "refresh_interval_seconds": 7}
# Every state-changing route, with the fields that would make the request do harm if it got through
# (beta on GPU 1: GPU 0 holds alpha, so a load there would be refused for another reason).
ATTACKED_ROUTES: list[tuple[str, str, dict[str, Any]]] = [
    ("POST", "/api/models/alpha/unload", {"now": "1"}),
    ("POST", "/api/models/beta/load", {"gpus": "1"}),
    ("PUT", "/api/settings", SETTINGS_ATTACK),
    ("POST", "/dashboard/models/alpha/unload", {"now": "1"}),
    ("POST", "/dashboard/models/beta/load", {"gpus": "1"}),
    ("POST", "/dashboard/settings", SETTINGS_ATTACK),
    ("POST", "/logout", {"now": "1"}),
]
FORM_ENCODINGS = ("urlencoded", "text/plain", "multipart", "empty")  # forms can only GET or POST
FETCH_BODIES = ("urlencoded", "text/plain", "multipart", "empty", "json")
BROWSER_REFUSED = "refused by the browser"


class GuardedServer(Server):
    """``tests.test_browser.Server`` with ``auth`` in its config file, accounts made (by the CLI, the
    password on stdin) before it starts, and an API token for the first account."""

    def __init__(self, tmp_path: Path, auth: str = "none", users: tuple[tuple[str, bool], ...] = ()) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = tmp_path / "gpuwarden.toml"
        lines = [f"state_dir = {json.dumps(str(tmp_path / 'state'))}", "unload_timeout_seconds = 3",
                 f"auth = {json.dumps(auth)}"]
        for model in FAKE_MODELS:
            lines.append("[[models]]")
            lines.extend(f"{key} = {toml_value(value)}" for key, value in model.items())
        self.config.write_text("\n".join(lines) + "\n", encoding="utf-8")
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("GPUWARDEN_")}
        for name, admin in users:
            self.cli("users", "add", name, *(["--admin"] if admin else []), "--password-stdin", stdin=PASSWORD + "\n")
        self.token = self.cli("users", "token", users[0][0]).strip() if users else None
        self.log = (tmp_path / "server.log").open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gpuwarden", "--config", str(self.config), "serve", "--port", str(self.port)],
            env=self.env, stdout=self.log, stderr=subprocess.STDOUT)
        if not wait_for(self._answers, timeout=30, interval=0.1):
            raise RuntimeError("server did not start: " + (tmp_path / "server.log").read_text(encoding="utf-8"))

    def _answers(self) -> bool:
        try:
            urllib.request.urlopen(self.url + "/login", timeout=2).read()  # public in both modes
            return True
        except OSError:
            return False

    def cli(self, *args: str, stdin: str | None = None) -> str:
        done = subprocess.run([sys.executable, "-m", "gpuwarden", "--config", str(self.config), *args], input=stdin,
                              env=self.env, capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 0, done.stderr
        return done.stdout

    def api(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(self.url + path, method=method, headers=headers,
                                         data=json.dumps(body or {}).encode() if method != "GET" else None)
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    def model(self, name: str) -> dict[str, Any]:
        return next(model for model in self.api("GET", "/api/models") if model["name"] == name)


class AttackSite:
    """One page, ``/attack``, served from another origin than gpuwarden's."""

    def __init__(self) -> None:
        self.html = ""
        site = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = site.html.encode() if self.path == "/attack" else b"not here"
                self.send_response(200 if self.path == "/attack" else 404)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"])
        yield launched
        launched.close()


@pytest.fixture
def start_server(fake_smi: FakeSmi, tmp_path: Path) -> Iterator[Callable[..., GuardedServer]]:
    started: list[GuardedServer] = []

    def start(auth: str = "none", users: tuple[tuple[str, bool], ...] = ()) -> GuardedServer:
        started.append(GuardedServer(tmp_path, auth, users))
        return started[-1]

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def attack_site() -> Iterator[AttackSite]:
    site = AttackSite()
    yield site
    site.stop()


def attack_plan() -> list[dict[str, Any]]:
    """Every route x every encoding: auto-submitting forms (POST only) and no-cors fetches with the
    user's credentials. A PUT is also tried in cors mode, the only mode a browser sends one in."""
    plan: list[dict[str, Any]] = []
    for method, path, fields in ATTACKED_ROUTES:
        step = {"method": method, "path": path, "fields": fields}
        if method == "POST":
            plan += [{**step, "via": "form", "encoding": encoding} for encoding in FORM_ENCODINGS]
        modes = ("no-cors",) if method == "POST" else ("no-cors", "cors")
        plan += [{**step, "via": "fetch", "mode": mode, "encoding": encoding}
                 for mode in modes for encoding in FETCH_BODIES]
    return [{**step, "id": index} for index, step in enumerate(plan)]


ATTACK_SCRIPT = """
window.__results = [];
const done = (step, outcome) => window.__results.push({id: step.id, outcome});
const textPlain = f => Object.entries(f).map(([k, v]) => `${k}=${v}`).join("\\r\\n") + "\\r\\n";
function body(step) {
  const f = step.fields;
  if (step.encoding === "urlencoded") return new URLSearchParams(Object.entries(f).map(([k, v]) => [k, String(v)]));
  if (step.encoding === "text/plain") return textPlain(f);
  if (step.encoding === "json") return JSON.stringify(f);
  if (step.encoding !== "multipart") return undefined;  // "empty"
  const data = new FormData();
  for (const [k, v] of Object.entries(f)) data.append(k, v);
  return data;
}
function viaFetch(step) {
  const init = {method: step.method, mode: step.mode, credentials: "include", body: body(step)};
  if (step.encoding === "json") init.headers = {"Content-Type": "application/json"};
  fetch(TARGET + step.path, init).then(r => done(step, `answered (${r.type})`),
                                       e => done(step, `REFUSED: ${e.message}`));
}
function viaForm(step) {
  const frame = document.createElement("iframe");  // one per form, so every form submits
  frame.name = `frame-${step.id}`; frame.width = frame.height = 0;
  document.body.append(frame);
  frame.addEventListener("load", () => {  // the initial about:blank is readable; gpuwarden's answer is not
    try { void frame.contentWindow.location.href; } catch (e) { done(step, "answered (form)"); }
  });
  const form = document.createElement("form");
  form.method = "post"; form.action = TARGET + step.path; form.target = frame.name;
  form.enctype = {"text/plain": "text/plain", "multipart": "multipart/form-data"}[step.encoding]
                 || "application/x-www-form-urlencoded";
  const fields = step.encoding === "empty" ? [] : step.encoding === "text/plain"
    ? [[JSON.stringify(step.fields).slice(0, -1) + ',"pad":"', '"}']]  // the body reads as JSON
    : Object.entries(step.fields);
  for (const [name, value] of fields) {
    const input = document.createElement("input");
    input.type = "hidden"; input.name = name; input.value = String(value); form.append(input);
  }
  document.body.append(form);
  form.submit();
}
for (const step of PLAN) (step.via === "form" ? viaForm : viaFetch)(step);
""".replace("REFUSED", BROWSER_REFUSED)


def attack_page(target: str, plan: list[dict[str, Any]]) -> str:
    return (f"<!doctype html><html><body><h1>cute cats</h1><script>\nconst TARGET = {json.dumps(target)};\n"
            f"const PLAN = {json.dumps(plan)};\n{ATTACK_SCRIPT}</script></body></html>")


def sign_in(page: Page, name: str, password: str = PASSWORD) -> None:
    page.fill("input[name='username']", name)
    page.fill("input[name='password']", password)
    page.click("form.login-form button[type='submit']")


def session_cookie(context: BrowserContext) -> dict[str, Any] | None:
    return next((dict(cookie) for cookie in context.cookies() if cookie["name"] == SESSION_COOKIE), None)


def audit_after(server: GuardedServer, last_id: int) -> list[dict[str, Any]]:
    return [entry for entry in server.api("GET", "/api/audit?limit=1000") if entry["id"] > last_id]


def run_attack(page: Page, server: GuardedServer, site: AttackSite, attacker_host: str) -> tuple[
        list[dict[str, Any]], list[dict[str, Any]], list[Response]]:
    """Open the attacker's page in ``page``: the plan, the steps the browser refused to send, and
    gpuwarden's answers to the requests it did send."""
    plan = attack_plan()
    site.html = attack_page(server.url, plan)
    answers: list[Response] = []
    page.on("response", lambda r: answers.append(r) if r.url.startswith(server.url + "/")
            and r.request.method not in ("GET", "HEAD") else None)
    page.goto(f"http://{attacker_host}:{site.port}/attack")
    page.wait_for_function(f"window.__results.length >= {len(plan)}", timeout=30_000)
    results = page.evaluate("window.__results")
    assert sorted(result["id"] for result in results) == [step["id"] for step in plan]  # every attempt was made
    refused = [plan[result["id"]] for result in results if result["outcome"].startswith(BROWSER_REFUSED)]
    sent = len(plan) - len(refused)
    deadline = time.monotonic() + 10
    while len(answers) < sent and time.monotonic() < deadline:
        page.wait_for_timeout(50)  # Playwright delivers its events only while it is called
    assert len(answers) >= sent, f"{len(answers)} answers to {sent} requests"
    return plan, refused, answers


@pytest.mark.parametrize(("auth", "attacker_host", "fetch_site"),
                         [("none", "localhost", "cross-site"), ("password", "127.0.0.1", "same-site")],
                         ids=["no-accounts-cross-site", "signed-in-same-site-other-port"])
def test_cross_site_requests_never_succeed(start_server: Callable[..., GuardedServer], attack_site: AttackSite,
                                           browser: Browser, auth: str, attacker_host: str, fetch_site: str) -> None:
    server = start_server(auth, users=(("alice", True),) if auth == "password" else ())
    server.api("POST", "/api/models/alpha/load", {"gpus": "0"})
    assert wait_for(lambda: server.model("alpha")["state"] == "running", timeout=10)
    context = browser.new_context()
    page = context.new_page()
    if auth == "password":  # the session cookie exists (and, 127.0.0.1 being one site whatever the port, goes along)
        page.goto(server.url)
        sign_in(page, "alice")
        expect(page.locator("#signed-in-as")).to_have_text("alice (admin)")
    last_id = max((entry["id"] for entry in server.api("GET", "/api/audit")), default=0)

    plan, refused_by_browser, answers = run_attack(page, server, attack_site, attacker_host)
    succeeded = [f"{r.request.method} {r.url} -> {r.status}" for r in answers if r.status != 403]
    print(f"\n[{auth}, attacker at {attacker_host}] attempts {len(plan)}, sent {len(answers)}, refused by the"
          f" browser {len(refused_by_browser)} (PUT), answered 403 {len(answers) - len(succeeded)},"
          f" succeeded {len(succeeded)} {sorted(Counter(r.status for r in answers).items())}")
    assert len(plan) == 64 and succeeded == []
    assert len(answers) == len(plan) - len(refused_by_browser) >= 54  # every form, every POST fetch: 403
    assert {step["method"] for step in refused_by_browser} <= {"PUT"}  # no-cors PUT; cors PUT dies at preflight
    # (what the browser sent is read from gpuwarden's audit: Playwright's raw headers of a request
    # in another site's frame may never arrive)
    assert len([r for r in answers if r.request.resource_type == "document"]) == 24

    assert server.model("alpha")["state"] == "running" and server.model("alpha")["gpus"] == [0]
    assert server.model("beta")["state"] not in ("starting", "running") and server.model("beta")["gpus"] == []
    assert server.api("GET", "/api/settings") == DEFAULT_SETTINGS
    entries = audit_after(server, last_id)  # each refusal audited singly, and nothing else happened
    assert [e for e in entries if e["action"] != "denied" or e["result"] != "refused"] == []
    assert all(f"cross-site request refused (Sec-Fetch-Site: {fetch_site})" in e["detail"] for e in entries)
    # with accounts, SameSite=Strict did not keep the cookie off them (same site): the guard stopped them
    with_session = [", sent with alice's session: " in e["detail"] for e in entries]
    assert with_session == [auth == "password"] * len(entries) and all(e["user"] is None for e in entries)
    assert sorted(e["detail"].rsplit(": ", 1)[1] for e in entries) == sorted(
        f"{r.request.method} {r.url.removeprefix(server.url)}" for r in answers)
    if auth == "password":  # the attempts to sign alice out failed too
        page.goto(server.url)
        expect(page.locator("#signed-in-as")).to_have_text("alice (admin)")
    context.close()


def test_sign_in_ownership_and_sign_out(start_server: Callable[..., GuardedServer], browser: Browser) -> None:
    server = start_server("password", users=(("alice", True), ("bob", False)))
    alice = browser.new_context().new_page()
    alice.on("dialog", lambda dialog: dialog.accept())
    alice.goto(server.url)
    expect(alice).to_have_url(f"{server.url}/login?next=%2F")
    sign_in(alice, "alice", "wrong password")
    expect(alice.locator("#login-error")).to_have_text("wrong user name or password")
    assert session_cookie(alice.context) is None
    sign_in(alice, "alice")
    expect(alice).to_have_url(f"{server.url}/")
    expect(alice.locator("#signed-in-as")).to_have_text("alice (admin)")
    cookie = session_cookie(alice.context)
    assert cookie is not None and cookie["httpOnly"] is True and cookie["sameSite"] == "Strict"
    assert SESSION_COOKIE not in alice.evaluate("document.cookie")

    gpu_button(alice, "alpha", "0").click()
    expect(gpu_button(alice, "alpha", "0")).to_have_text("⚡ GPU 0 (alpha)")
    expect(model_card(alice, "alpha").locator(".owner")).to_have_text("by alice")
    expect(model_card(alice, "alpha").locator("button.unload")).to_be_enabled()

    bob = browser.new_context().new_page()
    bob.goto(server.url)
    sign_in(bob, "bob")
    expect(bob.locator("#signed-in-as")).to_have_text("bob")
    unload = model_card(bob, "alpha").locator("button.unload")
    expect(unload).to_be_disabled()
    expect(unload).to_have_attribute("title", re.compile(r"alpha was loaded by alice"))
    bolt = gpu_button(bob, "alpha", "0")  # the ⚡ button shows the model's details, never unloads
    expect(bolt).to_have_attribute("data-details", "details-alpha")
    assert bolt.get_attribute("hx-post") is None
    expect(bob.locator("#settings-form fieldset")).to_have_attribute("disabled", "")
    expect(bob.locator("#settings-form input[name='memory_threshold_mib']")).to_be_disabled()
    expect(bob.locator("#settings-form button[type='submit']")).to_be_disabled()
    expect(alice.locator("#settings-form input[name='memory_threshold_mib']")).to_be_enabled()

    bob.click("#logout-button")
    expect(bob).to_have_url(re.compile(r"/login$"))
    assert session_cookie(bob.context) is None
    bob.goto(server.url)
    expect(bob).to_have_url(f"{server.url}/login?next=%2F")
    alpha = server.model("alpha")
    assert alpha["owner"] == "alice" and alpha["state"] in ("starting", "running")
    alice.context.close()
    bob.context.close()

