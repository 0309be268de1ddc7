"""Waiting for a busy GPU from the dashboard, in a real browser against a real server on the fake
nvidia-smi: "Wait for GPU N" beside the disabled button, the queue shown, the model started by
itself (pushed to the page) once the GPU frees, and a withdrawal."""

from __future__ import annotations

import pytest
from playwright.sync_api import Page, expect

from tests.conftest import FakeSmi
from tests.test_browser import (  # noqa: F401 - the shared fixtures, by name
    Server,
    browser,
    gpu_button,
    model_card,
    page,
    server,
)

pytestmark = pytest.mark.browser


def test_waiting_for_a_busy_gpu_starts_the_model_once_it_frees(server: Server, fake_smi: FakeSmi,  # noqa: F811
                                                               page: Page) -> None:  # noqa: F811
    intruder = fake_smi.add_foreign("1", mib=900, name="train.py")
    server.api("PUT", "/api/settings", {"refresh_interval_seconds": 1})
    server.api("GET", "/api/gpus?refresh=true")
    page.goto(server.url)
    expect(gpu_button(page, "beta", "1")).to_be_disabled()
    expect(page.locator("button.wait-btn[data-gpu='0']")).to_have_count(0)  # an idle GPU needs no waiting
    page.locator("button.wait-btn[data-model='beta'][data-gpu='1']").click()
    expect(page.locator(".toast").last).to_contain_text("beta waits for GPU 1")
    row = page.locator("#queue tr[data-model='beta']")
    expect(row.locator("td.position")).to_have_text("1")
    expect(row.locator("td.holders")).to_contain_text("train.py")
    expect(model_card(page, "beta").locator(".queue-mark")).to_contain_text("waiting for GPU 1 · position 1")
    expect(page.locator("button.wait-btn[data-model='beta']")).to_have_count(0)  # it waits already
    intruder.kill()
    intruder.wait()
    expect(gpu_button(page, "beta", "1")).to_have_text("⚡ GPU 1 (beta)", timeout=15000)  # pushed: no click
    expect(page.locator("#queue")).to_have_count(0)
    assert server.api("GET", "/api/queue") == []


def test_a_waiting_load_is_withdrawn_from_the_dashboard(server: Server, fake_smi: FakeSmi,  # noqa: F811
                                                        page: Page) -> None:  # noqa: F811
    fake_smi.add_foreign("0", mib=900, name="train.py")
    server.api("GET", "/api/gpus?refresh=true")
    page.goto(server.url)
    page.locator("button.wait-btn[data-model='gamma'][data-gpu='0']").click()
    row = page.locator("#queue tr[data-model='gamma']")
    expect(row).to_have_count(1)
    row.locator("button.withdraw").click()  # the confirmation is accepted
    expect(page.locator("#queue")).to_have_count(0)
    expect(page.locator(".toast").last).to_contain_text("withdrawn")
    assert server.api("GET", "/api/queue") == []
