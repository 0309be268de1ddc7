"""The README's first command, ``python run.py demo``, runs ``gpuwarden serve --demo``: its settings,
and the whole demo driven over HTTP as a user would (a real server process, a real demo model)."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

from gpuwarden.config import default_state_dir, load_settings
from gpuwarden.demo import demo_overrides


@pytest.fixture
def user_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Per-user folders under tmp_path: state in ``tmp_path/state``, an empty config folder."""
    config = tmp_path / "config"
    config.mkdir()
    dirs = {"XDG_STATE_HOME": str(tmp_path / "state"), "LOCALAPPDATA": str(tmp_path / "state"),
            "XDG_CONFIG_HOME": str(config), "APPDATA": str(config)}
    for key, value in dirs.items():
        monkeypatch.setenv(key, value)
    return dirs


def test_demo_settings_validate(user_dirs: dict[str, str], tmp_path: Path) -> None:
    settings = load_settings(None, environ={}, overrides=demo_overrides())
    assert [(m.name, m.default_gpus) for m in settings.models] == [("llama-7b", 1), ("qwen-14b", 2)]
    assert all(m.health_url == "http://127.0.0.1:{port}/health" for m in settings.models)
    assert settings.mock_smi is not None and settings.mock_smi.is_file()
    assert settings.mock_smi.name == "gpu.txt" and settings.mock_smi_text is None
    assert settings.state_dir.name == "demo"
    assert settings.state_dir == default_state_dir() / "demo" == tmp_path / "state" / "gpuwarden" / "demo"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def call(port: int, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, str]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method,
                                     headers={"Content-Type": "application/json"} if data is not None else {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode("utf-8")
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode("utf-8")


def wait_for(predicate: Callable[[], Any], timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            result = predicate()
            if result:
                return result
        time.sleep(0.2)
    return predicate()


def model_state(port: int, name: str) -> str:
    status, text = call(port, "GET", "/api/models")
    assert status == 200, text
    return str(next(m for m in json.loads(text) if m["name"] == name)["state"])


def start_demo(tmp_path: Path, dirs: dict[str, str], port: int) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPUWARDEN_")}
    env.update(dirs)
    log = (tmp_path / "server.log").open("wb")
    try:
        return subprocess.Popen([sys.executable, "-m", "gpuwarden", "serve", "--demo", "--port", str(port)],
                                cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    finally:
        log.close()


def stop_demo(server: subprocess.Popen[bytes]) -> None:
    children: list[psutil.Process] = []
    with contextlib.suppress(psutil.Error):
        children = psutil.Process(server.pid).children(recursive=True)
    server.terminate()
    try:
        server.wait(10)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait(10)
    for child in children:  # a demo model left behind by a failed test
        with contextlib.suppress(psutil.Error):
            child.kill()
    psutil.wait_procs(children, timeout=5)


def test_demo_end_to_end(user_dirs: dict[str, str], tmp_path: Path) -> None:
    port = free_port()
    server = start_demo(tmp_path, user_dirs, port)
    try:
        first = wait_for(lambda: server.poll() is None and call(port, "GET", "/api/gpus"), 20)
        assert first and first[0] == 200, (tmp_path / "server.log").read_text(encoding="utf-8", errors="replace")
        document = json.loads(first[1])
        assert document["total_gpus"] == 2 and document["mode"] == "gpu"
        gpu0, gpu1 = document["gpu_status"]
        assert (gpu0["index"], gpu0["state"]) == (0, "idle")
        assert (gpu1["index"], gpu1["state"], gpu1["memory_used_mib"]) == (1, "occupied_by_others", 363)

        status, text = call(port, "POST", "/api/models/llama-7b/load", {"gpus": "0"})
        assert status == 200, text
        assert json.loads(text)["gpus"] == [0] and json.loads(text)["state"] in ("starting", "running")
        assert wait_for(lambda: model_state(port, "llama-7b") == "running", 20), model_state(port, "llama-7b")

        status, page = call(port, "GET", "/")
        assert status == 200 and "Total GPUs: 2" in page

        status, text = call(port, "POST", "/api/models/llama-7b/unload")
        assert status == 200, text
        assert json.loads(text)["state"] == "stopped"
        assert model_state(port, "llama-7b") == "stopped"
    finally:
        stop_demo(server)
    state_dir = tmp_path / "state" / "gpuwarden" / "demo"
    assert (state_dir / "gpuwarden.db").is_file()  # the demo kept its state under tmp_path
    assert default_state_dir() / "demo" == state_dir
