"""The dashboard in a real browser: Playwright driving Debian's chromium against a real server
(``gpuwarden serve`` in a subprocess) whose nvidia-smi is the fake one on PATH."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import FAKE_MODELS, UNDER_WINE, FakeSmi, free_port, wait_for

pytestmark = pytest.mark.browser

CHROMIUM = os.environ.get("GPUWARDEN_CHROMIUM", "/usr/bin/chromium")
REQUIRED = os.environ.get("GPUWARDEN_REQUIRE_BROWSER") == "1"

try:
    from playwright.sync_api import Browser, Page, expect, sync_playwright
except ImportError:  # pragma: no cover
    sync_playwright = None  # type: ignore[assignment]

if UNDER_WINE:  # Wine, not Windows: Playwright's driver does not run there (real Windows runs these)
    pytest.skip("Playwright's driver does not run under Wine", allow_module_level=True)
if sync_playwright is None or not Path(CHROMIUM).exists():
    if REQUIRED:
        raise RuntimeError(f"browser tests required but chromium ({CHROMIUM}) or playwright is missing")
    pytest.skip("chromium or playwright not installed", allow_module_level=True)


def wait_until_serving(url: str, log: Path, seconds: float = 30) -> None:
    """Until the server at ``url`` answers; its log in the error if it never does."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url + "/api/gpus", timeout=2).read()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"server did not start: {log.read_text(encoding='utf-8', errors='replace')}")


def toml_value(value: Any) -> str:
    return json.dumps(value) if not isinstance(value, list) else "[" + ", ".join(json.dumps(v) for v in value) + "]"


class Server:
    def __init__(self, tmp_path: Path, fake_smi: FakeSmi | None, extra_env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = tmp_path / "gpuwarden.toml"
        lines = [f"state_dir = {json.dumps(str(tmp_path / 'state'))}", "unload_timeout_seconds = 3"]
        for model in FAKE_MODELS:
            lines.append("[[models]]")
            lines.extend(f"{key} = {toml_value(value)}" for key, value in model.items())
        config.write_text("\n".join(lines) + "\n", encoding="utf-8")
        env = {k: v for k, v in os.environ.items() if not k.startswith("GPUWARDEN_")}
        env.update(extra_env or {})
        self.log = (tmp_path / "server.log").open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gpuwarden", "--config", str(config), "serve", "--port", str(self.port)],
            env=env, stdout=self.log, stderr=subprocess.STDOUT)
        wait_until_serving(self.url, tmp_path / "server.log")

    def api(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        request = urllib.request.Request(self.url + path, method=method,
                                         data=json.dumps(body or {}).encode() if method != "GET" else None,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    def stop(self) -> None:
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()


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
def server(fake_smi: FakeSmi, tmp_path: Path) -> Iterator[Server]:
    running = Server(tmp_path, fake_smi)
    yield running
    running.stop()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    opened = context.new_page()
    opened.on("dialog", lambda dialog: dialog.accept())
    yield opened
    context.close()


def gpu_button(page: Page, model: str, gpu: str) -> Any:
    return page.locator(f"button.gpu-btn[data-model='{model}'][data-gpu='{gpu}']")


def model_card(page: Page, model: str) -> Any:
    return page.locator(f".model-item[data-model='{model}']")


def test_summary_buttons_and_occupied_gpu(server: Server, fake_smi: FakeSmi, page: Page) -> None:
    intruder = fake_smi.add_foreign("1", mib=700, name="train.py")
    server.api("GET", "/api/gpus?refresh=true")
    page.goto(server.url)
    expect(page.locator("#gpu-summary")).to_have_text("Total GPUs: 2")
    expect(page.locator("#auto-refresh-badge")).to_have_text("Auto-refresh: Active (5m)")
    for model in FAKE_MODELS:
        expect(model_card(page, model["name"]).locator("button.gpu-btn")).to_have_count(2)
        expect(gpu_button(page, model["name"], "0")).to_be_enabled()
        occupied = gpu_button(page, model["name"], "1")
        expect(occupied).to_be_disabled()
        expect(occupied).to_contain_text("(Occupied)")
        expect(occupied).to_have_attribute("title", re.compile(rf".*PID {intruder.pid} train\.py.*"))
    expect(page.locator(".gpu[data-gpu='1'] .procs")).to_contain_text("train.py")


def test_load_refusal_unload_and_live_updates(server: Server, fake_smi: FakeSmi, page: Page, browser: Browser) -> None:
    page.goto(server.url)
    other = browser.new_context().new_page()
    other.goto(server.url)
    page.evaluate("window.__noReload = true")

    gpu_button(page, "alpha", "0").click()
    expect(gpu_button(page, "alpha", "0")).to_have_text("⚡ GPU 0 (alpha)")
    expect(gpu_button(page, "alpha", "0")).to_be_enabled()
    expect(gpu_button(page, "beta", "0")).to_be_disabled()
    expect(gpu_button(page, "beta", "0")).to_contain_text("⚡")
    # The other open dashboard learns of it without waiting for its 5-minute poll.
    expect(gpu_button(other, "beta", "0")).to_be_disabled(timeout=5000)
    expect(other.locator(".gpu[data-gpu='0']")).to_have_attribute("data-state", "model_loaded", timeout=5000)

    # GPU 1 looks idle on the page; someone starts a job on it before the click: refused, clearly.
    expect(gpu_button(page, "beta", "1")).to_be_enabled()
    page.evaluate("() => { const es = document.querySelector('#live-updates'); es.remove(); }")  # freeze page state
    intruder = fake_smi.add_foreign("1", mib=900, name="someone-else.py")
    gpu_button(page, "beta", "1").click()
    error = model_card(page, "beta").locator(".model-error")
    expect(error).to_contain_text("GPU 1 is occupied by someone else")
    expect(error).to_contain_text(f"PID {intruder.pid}")
    intruder.kill()
    intruder.wait()

    model_card(page, "alpha").locator("button.unload").click()
    expect(gpu_button(page, "beta", "0")).to_be_enabled()
    expect(gpu_button(page, "alpha", "0")).to_have_text("GPU 0")
    assert page.evaluate("window.__noReload") is True
    expect(other.locator(".gpu[data-gpu='0']")).to_have_attribute("data-state", "idle", timeout=5000)
    other.context.close()


def test_multi_gpu_selection_and_crash_shown(server: Server, fake_smi: FakeSmi, page: Page) -> None:
    page.goto(server.url)
    form = model_card(page, "gamma").locator("form.multi")
    form.locator("input[value='0']").check()
    form.locator("input[value='1']").check()
    form.locator("button.load-selected").click()
    expect(gpu_button(page, "gamma", "0")).to_have_text("⚡ GPU 0 (gamma)")
    expect(gpu_button(page, "gamma", "1")).to_have_text("⚡ GPU 1 (gamma)")
    expect(gpu_button(page, "alpha", "1")).to_be_disabled()
    expect(model_card(page, "gamma").locator(".model-state")).to_have_text("running", timeout=8000)
    # The model crashes: every dashboard shows it within seconds, with its error. ("running" comes from
    # its start-up grace; wait until its processes show on the GPUs, then kill them.)
    def gamma_pids() -> list[int]:
        infos = [json.loads(path.read_text(encoding="utf-8")) for path in (fake_smi.dir / "procs").glob("*.json")]
        return [info["pid"] for info in infos if info["mib"] == 300]

    assert wait_for(lambda: len(gamma_pids()) == 1)  # the model (its child holds 100 MiB)
    for pid in gamma_pids():
        os.kill(pid, signal.SIGKILL)
    expect(model_card(page, "gamma").locator(".model-state")).to_have_text("failed", timeout=6000)
    expect(model_card(page, "gamma").locator(".failure")).to_contain_text("exit code -9")
    expect(gpu_button(page, "alpha", "1")).to_be_enabled()


def test_auto_refresh_updates_without_reload(server: Server, fake_smi: FakeSmi, page: Page) -> None:
    page.goto(server.url)
    page.evaluate("window.__noReload = true")
    page.fill("input[name='refresh_interval_seconds']", "2")
    page.click("#settings-form button[type='submit']")
    expect(page.locator("#auto-refresh-badge")).to_have_text("Auto-refresh: Active (2s)")
    expect(page.locator("#dashboard-content")).to_have_attribute("hx-trigger", "every 2s")
    first = page.locator("#checked-at").inner_text()
    fake_smi.add_foreign("0", mib=1500, name="late-job")
    expect(page.locator(".gpu[data-gpu='0']")).to_have_attribute("data-state", "occupied_by_others", timeout=8000)
    expect(page.locator("#checked-at")).not_to_have_text(first, timeout=8000)
    assert page.evaluate("window.__noReload") is True
    assert server.api("GET", "/api/settings")["refresh_interval_seconds"] == 2


def test_hostile_process_name_is_shown_as_text(server: Server, fake_smi: FakeSmi, page: Page) -> None:
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: dialogs.append(dialog.message))
    fake_smi.add_foreign("1", mib=500, name="<img src=x onerror=alert(1)>")
    server.api("GET", "/api/gpus?refresh=true")
    page.goto(server.url)
    expect(page.locator(".gpu[data-gpu='1'] .pname")).to_have_text("<img src=x onerror=alert(1)>")
    assert page.locator(".gpu img").count() == 0
    page.wait_for_timeout(300)
    assert dialogs == []


def test_cpu_mode_page(fake_smi: FakeSmi, tmp_path: Path, page: Page) -> None:
    fake_smi.set_mode("nodevices")
    cpu_server = Server(tmp_path, fake_smi)
    try:
        page.goto(cpu_server.url)
        expect(page.locator("#gpu-summary")).to_have_text("CPU Mode (No GPU Detected)")
        expect(page.locator("#cpu-reason")).to_contain_text("No devices were found")
        buttons = model_card(page, "alpha").locator("button.gpu-btn")
        expect(buttons).to_have_count(1)
        expect(buttons).to_have_text("CPU")
        buttons.click()
        expect(gpu_button(page, "alpha", "cpu")).to_have_text("⚡ CPU (alpha)")
    finally:
        cpu_server.stop()


def test_phone_layout_has_no_horizontal_scroll(server: Server, fake_smi: FakeSmi, browser: Browser) -> None:
    fake_smi.add_foreign("1", mib=500, name="...a\\very\\long\\windows\\path\\to\\SomeProgramWithALongName.exe")
    server.api("GET", "/api/gpus?refresh=true")
    context = browser.new_context(viewport={"width": 375, "height": 740}, is_mobile=True)
    phone = context.new_page()
    phone.goto(server.url)
    expect(phone.locator("#gpu-summary")).to_have_text("Total GPUs: 2")
    assert phone.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")
    context.close()


assert shutil.which  # keep import used on every platform
