"""The dashboard people keep open, in a real browser, on the demo's simulated machine: memory bars
coloured by whose memory it is, sparklines from the server's history, uptimes that tick without a
request, toasts, the desktop's GPU loadable, a foreign job with its PID and user, a model's details."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect

from tests.test_browser import (  # noqa: F401 - the shared Chromium fixture (skips without it)
    browser,
    free_port,
    wait_until_serving,
)

pytestmark = pytest.mark.browser

BUSY_RED = "rgb(179, 38, 30)"
MODEL_AMBER = "rgb(138, 90, 0)"
DESKTOP_GREY = "rgb(141, 153, 174)"


class Demo:
    """``gpuwarden serve --demo`` with its state under tmp_path, reading the GPUs every second."""

    def __init__(self, tmp_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("GPUWARDEN_")}
        env.update({"XDG_STATE_HOME": str(tmp_path / "state"), "LOCALAPPDATA": str(tmp_path / "state"),
                    "XDG_CONFIG_HOME": str(tmp_path), "APPDATA": str(tmp_path),
                    "GPUWARDEN_HISTORY_INTERVAL_SECONDS": "1"})
        self.log = (tmp_path / "demo.log").open("wb")
        self.process = subprocess.Popen([sys.executable, "-m", "gpuwarden", "serve", "--demo", "--port",
                                         str(self.port)], env=env, stdout=self.log, stderr=subprocess.STDOUT)
        wait_until_serving(self.url, tmp_path / "demo.log")

    def stop(self) -> None:
        for name in ("llama-7b", "qwen-14b", "whisper-large"):
            request = urllib.request.Request(f"{self.url}/api/models/{name}/unload", method="POST")
            with contextlib.suppress(OSError):  # not loaded
                urllib.request.urlopen(request, timeout=30).read()
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[Demo]:
    running = Demo(tmp_path)
    yield running
    running.stop()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:  # noqa: F811 - the shared fixture, by name
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    opened = context.new_page()
    opened.on("dialog", lambda dialog: dialog.accept())
    yield opened
    context.close()


def expect_colour(page: Page, selector: str, colour: str) -> None:
    """The element's background is ``colour``: asked again until it is, since a pushed refresh may swap
    the element out while it is read (a detached element has no computed style)."""
    expect(page.locator(selector).first).to_have_css("background-color", colour)


def test_the_demo_machine_in_the_dashboard(demo: Demo, page: Page) -> None:
    page.goto(demo.url)
    busy, desktop = page.locator("li.gpu[data-gpu='1']"), page.locator("li.gpu[data-gpu='2']")
    expect(busy).to_have_attribute("data-state", "occupied_by_others")
    expect(busy.locator("tr.foreign td").nth(2)).to_have_text("alice")  # someone else's job: PID, name, user
    assert re.fullmatch(r"\d+", busy.locator("tr.foreign td").first.inner_text())
    expect_colour(page, "li.gpu[data-gpu='1'] .part-others", BUSY_RED)
    expect(desktop).to_have_attribute("data-state", "idle")
    expect(desktop.locator(".desktop-note")).to_contain_text("desktop: ")
    expect_colour(page, "li.gpu[data-gpu='2'] .part-desktop", DESKTOP_GREY)
    expect(page.locator("[data-model='llama-7b'] button.gpu-btn[data-gpu='2']")).to_be_enabled()  # loadable
    expect(page.locator("[data-model='llama-7b'] button.gpu-btn[data-gpu='1']")).to_be_disabled()


def test_a_load_toasts_shows_its_memory_and_its_uptime_ticks(demo: Demo, page: Page) -> None:
    page.goto(demo.url)
    page.locator("[data-model='llama-7b'] button.gpu-btn[data-gpu='0']").click()
    expect(page.locator("#toasts .toast-ok")).to_have_text("Loading llama-7b on GPU 0")
    card = page.locator("li.gpu[data-gpu='0']")
    expect(card).to_have_attribute("data-state", "model_loaded", timeout=20_000)
    expect(card.locator(".memtext")).to_contain_text("6913 / 24564 MiB used", timeout=20_000)
    expect_colour(page, "li.gpu[data-gpu='0'] .part-model", MODEL_AMBER)
    expect(card.locator(".telemetry")).to_contain_text("% util")
    uptime = page.locator("[data-model='llama-7b'] .uptime")
    expect(uptime).to_have_text(re.compile(r"\d+s"), timeout=20_000)
    page.route("**/dashboard/refresh**", lambda route: route.abort())  # no new fragment from now on
    before = uptime.inner_text()
    page.wait_for_timeout(2200)
    assert uptime.inner_text() != before  # it ticked in the browser


def test_sparklines_draw_the_servers_history(demo: Demo, page: Page) -> None:
    time.sleep(3.5)  # three readings or more, a second apart
    history = urllib.request.urlopen(demo.url + "/api/gpus/history", timeout=10).read().decode()
    assert '"index": 1' in history or '"index":1' in history
    page.goto(demo.url)
    line = page.locator("li.gpu[data-gpu='1'] .spark-util polyline")
    expect(line).to_have_count(1)
    points = (line.get_attribute("points") or "").split()
    assert len(points) >= 2 and all(re.fullmatch(r"[\d.]+,[\d.]+", p) for p in points)


def test_the_bolt_button_shows_details_and_only_unload_unloads(demo: Demo, page: Page) -> None:
    page.goto(demo.url)
    page.locator("[data-model='whisper-large'] button.gpu-btn[data-gpu='2']").click()  # the desktop's GPU
    bolt = page.locator("[data-model='whisper-large'] button.gpu-btn[data-gpu='2']")
    expect(bolt).to_contain_text("whisper-large", timeout=20_000)
    bolt.click()
    details = page.locator("#details-whisper-large")
    expect(details).to_have_attribute("open", "")
    expect(details).to_contain_text("Model process")
    expect(page.locator("[data-model='whisper-large'] .model-state")).not_to_have_text("not loaded")
    page.locator("[data-model='whisper-large'] button.unload").click()
    expect(page.locator("#toasts .toast-ok").last).to_have_text("Unloaded whisper-large", timeout=20_000)
    expect(page.locator("[data-model='whisper-large'] .model-state")).to_have_text("not loaded")


def test_load_on_selected_needs_a_ticked_gpu(demo: Demo, page: Page) -> None:
    page.goto(demo.url)
    form = page.locator("[data-model='qwen-14b'] form.multi")
    button = form.locator("button.load-selected")
    expect(button).to_be_disabled()
    form.locator("input[name=gpus][value='0']").check()
    form.locator("input[name=gpus][value='2']").check()
    expect(button).to_be_enabled()
    button.click()
    expect(page.locator("#toasts .toast-ok")).to_have_text("Loading qwen-14b on GPU 0,2")
    expect(page.locator("li.gpu[data-gpu='2']")).to_have_attribute("data-state", "model_loaded", timeout=20_000)


def test_favicon_and_a_wide_screen(demo: Demo, page: Page) -> None:
    with urllib.request.urlopen(demo.url + "/favicon.ico", timeout=10) as response:
        assert response.headers["Content-Type"].startswith("image/svg+xml") and b"<svg" in response.read()
    page.set_viewport_size({"width": 2400, "height": 1200})
    page.goto(demo.url)
    widths = page.locator("li.gpu").evaluate_all("cards => cards.map(card => card.getBoundingClientRect().top)")
    assert len(set(widths)) == 1  # three GPU cards side by side
    main = page.locator("main").evaluate("element => element.getBoundingClientRect().width")
    assert main > 1500


def test_a_hidden_tab_lets_its_stream_go_and_catches_up_when_shown(demo: Demo, page: Page) -> None:
    """Browsers give a site six connections: a tab in the background must not hold one."""
    page.goto(demo.url)
    refreshes: list[str] = []
    page.on("request", lambda request: refreshes.append(request.url) if "probe=false" in request.url else None)
    visibility = "hidden => { Object.defineProperty(document, 'hidden', {value: hidden, configurable: true});" \
                 " document.dispatchEvent(new Event('visibilitychange')); }"
    page.evaluate(visibility, True)
    page.wait_for_timeout(300)
    refreshes.clear()
    request = urllib.request.Request(demo.url + "/api/models/whisper-large/load", method="POST",
                                     data=b'{"gpus": "2"}', headers={"Content-Type": "application/json"})
    urllib.request.urlopen(request, timeout=30).read()
    page.wait_for_timeout(2500)  # readings every second push changes: none reaches a hidden tab
    assert refreshes == []
    page.evaluate(visibility, False)
    expect(page.locator("li.gpu[data-gpu='2']")).to_have_attribute("data-state", "model_loaded", timeout=10_000)
    assert refreshes  # it caught up
