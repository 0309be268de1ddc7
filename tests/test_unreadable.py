"""Fail closed: GPUs that cannot be read are never taken for "no GPUs", and no load lands on a GPU
(or silently on the CPU instead) while they cannot be read. Driven through the real subprocess path
with the fake nvidia-smi, and the real CLI."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from gpuwarden.cli import main
from gpuwarden.controller import Controller, build_controller
from gpuwarden.errors import LoadRefused
from gpuwarden.probe.shared import Freshness
from gpuwarden.records import GpuState, ModelState, StatusMode, parse_selection
from gpuwarden.web.app import create_app
from tests.conftest import FAKE_MODELS, FakeSmi, make_settings
from tests.test_controller import model_pids

FAILURES = ("fail", "garbage", "hang")


def controller_for(tmp_path: Path, **overrides: Any) -> Controller:
    """A 1 s nvidia-smi timeout where a test makes it hang; elsewhere room for a slow start (Wine, a
    busy CI machine), so that an answer is never taken for a hang."""
    values: dict[str, Any] = {"models": FAKE_MODELS, "unload_timeout_seconds": 3, "nvidia_smi_timeout_seconds": 10}
    return build_controller(make_settings(tmp_path / "state", **{**values, **overrides}))


@pytest.mark.parametrize("mode", FAILURES)
def test_a_failing_nvidia_smi_is_unreadable_and_refuses_every_gpu_load(mode: str, fake_smi: FakeSmi,
                                                                       tmp_path: Path) -> None:
    fake_smi.set_mode(mode)
    controller = controller_for(tmp_path, nvidia_smi_timeout_seconds=1 if mode == "hang" else 10)
    status = controller.status(Freshness.NOW)
    assert status.mode is StatusMode.UNREADABLE and not status.cpu_mode and status.error
    for selection in ("0", "0,1"):
        with pytest.raises(LoadRefused, match="GPU status unreadable"):
            controller.load("alpha", parse_selection(selection))
    with pytest.raises(LoadRefused, match="choose 'cpu' explicitly"):
        controller.load("alpha")  # a default load never falls back to the CPU
    assert model_pids(fake_smi) == [] and controller.models()[0].state is ModelState.NOT_LOADED
    view = controller.load("alpha", parse_selection("cpu"))  # only an explicit choice runs on the CPU
    assert view.on_cpu
    controller.unload("alpha")


def test_no_devices_is_cpu_mode_where_a_default_load_runs_on_the_cpu(fake_smi: FakeSmi, tmp_path: Path) -> None:
    fake_smi.set_mode("nodevices")
    controller = controller_for(tmp_path)
    assert controller.status(Freshness.NOW).mode is StatusMode.CPU
    assert controller.load("alpha").on_cpu
    controller.unload("alpha")


def test_server_keeps_the_last_good_gpus_and_a_loaded_model_stays_unloadable(fake_smi: FakeSmi,
                                                                            tmp_path: Path) -> None:
    controller = controller_for(tmp_path)
    controller.load("alpha", parse_selection("0"))
    fake_smi.set_mode("fail")
    status = controller.status(Freshness.NOW)
    assert status.unreadable and status.reading_age_seconds is not None and status.reading_age_seconds < 60
    assert [(g.index, g.state, g.loadable, g.select_enabled) for g in status.gpus] == [
        (0, GpuState.MODEL_LOADED, False, False), (1, GpuState.UNAVAILABLE, False, False)]
    assert status.gpus[0].model_names == ("alpha",) and "couldn't communicate" in status.gpus[1].reason
    document = status.to_dict()
    assert document["mode"] == "unreadable" and document["total_gpus"] == 2
    assert [g["index"] for g in document["gpu_status"]] == [0, 1, "CPU"]
    assert document["last_good_reading_at"] is not None and document["reading_age_seconds"] is not None
    with pytest.raises(LoadRefused, match=r"last good reading \d+ s ago"):
        controller.load("beta", parse_selection("1"))
    assert controller.unload("alpha").state is ModelState.STOPPED  # unloading needs no GPU reading
    assert model_pids(fake_smi) == []


def test_cli_default_load_on_a_failing_driver_starts_nothing(fake_smi: FakeSmi, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    fake_smi.set_mode("fail")
    config = tmp_path / "gpuwarden.toml"
    config.write_text(f"state_dir = {json.dumps(str(tmp_path / 'state'))}\n"
                      '[[models]]\nname = "gpujob"\ncommand = ["python3", "-c", "pass"]\n', encoding="utf-8")
    assert main(["--config", str(config), "load", "gpujob"]) == 1
    assert "GPU status unreadable" in capsys.readouterr().err
    assert main(["--config", str(config), "status"]) == 1
    out = capsys.readouterr().out
    assert out.startswith("GPU status unreadable") and "CPU Mode" not in out
    assert main(["--config", str(config), "models", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["state"] == "not_loaded"


@pytest.mark.anyio
async def test_dashboard_says_unreadable_and_offers_only_the_cpu(fake_smi: FakeSmi, tmp_path: Path) -> None:
    controller = controller_for(tmp_path)
    controller.status(Freshness.NOW)
    fake_smi.set_mode("fail")
    app = create_app(controller, monitor=False)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1:8000") as http:
        page = (await http.get("/dashboard/refresh", params={"now": "true"})).text
    assert "GPU status unreadable" in page and "CPU Mode" not in page
    assert "Last good reading" in page and "couldn&#39;t communicate" in page
    assert page.count('data-model="alpha" title="Load alpha on the CPU"') == 1
    assert 'data-gpu="0" data-model="alpha"' in page and "disabled" in page


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_a_hung_nvidia_smi_starves_nothing(fake_smi: FakeSmi, tmp_path: Path) -> None:
    """50 pollers wait on a hung nvidia-smi; every endpoint that needs no new reading still answers at
    once, and the hung program is run once for all of them."""
    controller = controller_for(tmp_path, nvidia_smi_timeout_seconds=3)
    controller.status(Freshness.NOW)
    fake_smi.set_mode("hang")
    before = fake_smi.calls
    app = create_app(controller, monitor=False)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1:8000",
                                 timeout=60) as http:
        pollers = [asyncio.ensure_future(http.get("/api/gpus", params={"refresh": "true"})) for _ in range(50)]
        await asyncio.sleep(0.3)
        slowest = 0.0
        for path in ("/api/settings", "/api/models", "/api/gpus", "/") * 5:
            started = time.monotonic()
            assert (await http.get(path)).status_code == 200
            slowest = max(slowest, time.monotonic() - started)
        assert not any(p.done() for p in pollers)  # they are still waiting for the hung nvidia-smi ...
        answers = await asyncio.gather(*pollers)
    assert slowest < 1.0, slowest  # ... while nothing else waited for it (bench/ measures the p99)
    assert all(a.status_code == 200 and a.json()["mode"] == "unreadable" for a in answers)
    assert fake_smi.calls - before == 1


def test_a_gpu_load_right_after_a_failed_reading_is_refused_without_running_nvidia_smi(
        fake_smi: FakeSmi, tmp_path: Path) -> None:
    controller = controller_for(tmp_path, nvidia_smi_timeout_seconds=1)
    fake_smi.set_mode("hang")
    assert controller.status(Freshness.NOW).unreadable  # took the 1 s timeout once
    before, started = fake_smi.calls, time.monotonic()
    for selection in (parse_selection("0"), None):
        with pytest.raises(LoadRefused, match="GPU status unreadable"):
            controller.load("alpha", selection)
    assert fake_smi.calls == before and time.monotonic() - started < 1.0  # no wait inside the lock
