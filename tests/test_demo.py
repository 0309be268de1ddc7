"""The README's first command, ``python run.py demo``, runs ``gpuwarden serve --demo``: its settings,
and the whole demo driven over HTTP as a user would (a real server process, a real demo model)."""

from __future__ import annotations

import contextlib
import json
import os
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
from gpuwarden.probe.demo_registry import registry_dir
from gpuwarden.probe.users import os_account
from tests.conftest import REPO, UNDER_WINE, free_port


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
    assert [(m.name, m.default_gpus) for m in settings.models] == [("llama-7b", 1), ("qwen-14b", 2),
                                                                   ("whisper-large", 1)]
    assert all(m.health_url == "http://127.0.0.1:{port}/health" for m in settings.models)
    assert settings.gpu_source == "demo" and settings.mock_smi is None and settings.mock_smi_text is None
    assert all(str(registry_dir(settings.state_dir)) in m.command for m in settings.models)
    assert settings.state_dir.name == "demo"
    assert settings.state_dir == default_state_dir() / "demo" == tmp_path / "state" / "gpuwarden" / "demo"


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


def gpu(port: int, index: int) -> dict[str, Any]:
    status, text = call(port, "GET", "/api/gpus?refresh=true")
    assert status == 200, text
    return dict(json.loads(text)["gpu_status"][index])


def test_demo_end_to_end(user_dirs: dict[str, str], tmp_path: Path) -> None:
    """A simulated machine, not a picture: three GPUs (one held by someone else's job now and then,
    one driving the monitors), and demo models whose memory shows where they run."""
    port = free_port()
    server = start_demo(tmp_path, user_dirs, port)
    try:
        first = wait_for(lambda: server.poll() is None and call(port, "GET", "/api/gpus"), 20)
        assert first and first[0] == 200, (tmp_path / "server.log").read_text(encoding="utf-8", errors="replace")
        document = json.loads(first[1])
        assert document["total_gpus"] == 3 and document["mode"] == "gpu"
        gpu0, gpu1, gpu2 = document["gpu_status"]
        assert (gpu0["index"], gpu0["state"], gpu0["memory_used_mib"]) == (0, "idle", 1)
        assert gpu1["state"] == "occupied_by_others", gpu1  # the training job runs from the demo's start
        assert [(p["user"], p["used_memory_mib"]) for p in gpu1["process_info"]] == [("alice", 18432)]
        assert gpu2["state"] == "idle" and gpu2["loadable"] and gpu2["desktop_memory_mib"] > 0
        assert gpu2["process_info"] and all(p["desktop"] for p in gpu2["process_info"])

        status, text = call(port, "POST", "/api/models/llama-7b/load", {"gpus": "0"})
        assert status == 200, text
        assert json.loads(text)["gpus"] == [0] and json.loads(text)["state"] in ("starting", "running")
        assert wait_for(lambda: model_state(port, "llama-7b") == "running", 20), model_state(port, "llama-7b")
        loaded = wait_for(lambda: (lambda g: g if g["memory_used_mib"] == 1 + 6912 else None)(gpu(port, 0)), 10)
        assert loaded, gpu(port, 0)
        assert loaded["state"] == "model_loaded" and loaded["utilization_percent"] > 0
        assert [p["model_name"] for p in loaded["process_info"]] == ["llama-7b"]
        if not UNDER_WINE:  # psutil cannot name a process's user under Wine
            assert loaded["process_info"][0]["user"] == os_account()

        status, text = call(port, "POST", "/api/models/qwen-14b/load", {"gpus": "2"})
        assert status == 200, text  # the desktop's GPU takes a model
        assert wait_for(lambda: gpu(port, 2)["memory_used_mib"] > 9216, 20), gpu(port, 2)

        status, page = call(port, "GET", "/")
        assert status == 200 and "Total GPUs: 3" in page

        for name in ("llama-7b", "qwen-14b"):
            status, text = call(port, "POST", f"/api/models/{name}/unload")
            assert status == 200, text
            assert json.loads(text)["state"] == "stopped"
        assert gpu(port, 0)["memory_used_mib"] == 1  # its memory went with it
    finally:
        stop_demo(server)
    state_dir = tmp_path / "state" / "gpuwarden" / "demo"
    assert (state_dir / "gpuwarden.db").is_file()  # the demo kept its state under tmp_path
    assert default_state_dir() / "demo" == state_dir
    assert list(registry_dir(state_dir).glob("*.json")) == []  # stopped models leave no registration


@pytest.mark.skipif(UNDER_WINE, reason="run.py's .venv here is the Linux one; Wine runs the installed package")
def test_run_py_demo_says_where_to_go_and_stops_with_its_server(user_dirs: dict[str, str], tmp_path: Path) -> None:
    """The README's first command: it prints the address and how to stop, and stopping run.py by its
    PID (not only Ctrl+C) stops the server."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPUWARDEN_")}
    env.update(user_dirs)
    log = tmp_path / "run.log"
    with log.open("wb") as out:
        runner = subprocess.Popen([sys.executable, str(REPO / "run.py"), "demo", "--port", str(port)], cwd=tmp_path,
                                  env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        assert wait_for(lambda: runner.poll() is None and call(port, "GET", "/api/gpus")[0] == 200, 120), \
            log.read_text(encoding="utf-8", errors="replace")
        said = log.read_text(encoding="utf-8", errors="replace")
        assert f"open http://127.0.0.1:{port}/ in a browser" in said and "press Ctrl+C to stop" in said
        runner.terminate()  # as `kill PID` or a process manager would
        runner.wait(20)
        with pytest.raises(OSError):
            call(port, "GET", "/api/gpus")
    finally:
        stop_demo(runner)


def test_the_cli_acts_on_the_demo_too(user_dirs: dict[str, str], tmp_path: Path) -> None:
    """`gpuwarden --demo ...`: every CLI example of the README can be tried on the demo machine."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPUWARDEN_")}
    env.update(user_dirs)

    def gpuwarden(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "gpuwarden", "--demo", *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True, encoding="utf-8", timeout=120)

    listed = json.loads(gpuwarden("status", "--json").stdout)
    assert listed["source"].startswith("demo") and listed["total_gpus"] == 3
    loaded = gpuwarden("load", "whisper-large", "--gpus", "2")
    try:
        assert loaded.returncode == 0, loaded.stderr
        assert wait_for(lambda: "model loaded: whisper-large" in gpuwarden("status").stdout, 30)
        assert "whisper-large" in gpuwarden("models").stdout
    finally:
        unloaded = gpuwarden("unload", "whisper-large")
    assert unloaded.returncode == 0 and "unloaded whisper-large" in unloaded.stdout, unloaded.stderr
    assert (tmp_path / "state" / "gpuwarden" / "demo" / "gpuwarden.db").is_file()


@pytest.mark.skipif(sys.platform != "win32", reason="POSIX runs the demo in run.py's place (exec)")
def test_windows_run_py_ends_its_server_however_it_ends(tmp_path: Path) -> None:
    """run.py holds the demo server in a kill-on-close job: killing run.py by its PID (TerminateProcess,
    no handler runs) ends the server too."""
    script = (f"import subprocess, sys, time; sys.path.insert(0, {str(REPO)!r}); import run; "
              "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']); "
              "run._end_with_this_process(child.pid); print(child.pid, flush=True); time.sleep(120)")
    runner = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        server_pid = int(runner.stdout.readline())  # type: ignore[union-attr]
        assert psutil.pid_exists(server_pid)
        runner.kill()
        runner.wait(20)
        assert wait_for(lambda: not psutil.pid_exists(server_pid), 20)
    finally:
        stop_demo(runner)


def test_accounts_can_be_tried_on_the_demo(user_dirs: dict[str, str], tmp_path: Path) -> None:
    """The README's accounts, on the demo: an admin added with `--demo`, then `serve --demo` with
    auth = "password" wants a sign-in, which that admin has."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPUWARDEN_")}
    env.update(user_dirs)
    added = subprocess.run([sys.executable, "-m", "gpuwarden", "--demo", "users", "add", "alice", "--admin",
                            "--password-stdin"], input="correct horse battery\n", cwd=tmp_path, env=env,
                           capture_output=True, text=True, encoding="utf-8", timeout=120)
    assert added.returncode == 0, added.stderr
    port = free_port()
    server = start_demo(tmp_path, {**user_dirs, "GPUWARDEN_AUTH": "password"}, port)
    try:
        answer = wait_for(lambda: server.poll() is None and call(port, "GET", "/api/gpus"), 20)
        assert answer and answer[0] == 401, (tmp_path / "server.log").read_text(encoding="utf-8", errors="replace")
        token = subprocess.run([sys.executable, "-m", "gpuwarden", "--demo", "users", "token", "alice"], cwd=tmp_path,
                               env=env, capture_output=True, text=True, encoding="utf-8", timeout=120).stdout
        bearer = next(word for word in token.split() if word.startswith("gwt_"))
        request = urllib.request.Request(f"http://127.0.0.1:{port}/api/me",
                                         headers={"Authorization": f"Bearer {bearer}"})
        with urllib.request.urlopen(request, timeout=30) as response:
            me = json.loads(response.read())
        assert (me["user"], me["admin"], me["auth"]) == ("alice", True, "password")
    finally:
        stop_demo(server)
