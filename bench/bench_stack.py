"""What the web benchmark runs against: ``gpuwarden serve`` on 8 GPUs of the fake nvidia-smi (the
tests' fake, on PATH) with 20 models, the bare Starlette app serving the same bytes, and the cost
of a render per request (the naive way, measured in this process)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FAKE_SMI = ROOT / "tests" / "fakes" / "fake_nvidia_smi.py"
GPUS, MODELS = 8, 20


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def write_config(scratch: Path) -> Path:
    command = '["{python}", "-c", "import time; time.sleep(1e6)"]'
    models = "".join(f'[[models]]\nname = "model-{n:02d}"\ncommand = {command}\ndescription = "benchmark model {n}"\n\n'
                     for n in range(MODELS))
    config = scratch / "gpuwarden.toml"
    config.write_text(f'state_dir = "{(scratch / "state").as_posix()}"\nrefresh_interval_seconds = 300\n\n{models}',
                      encoding="utf-8")
    return config


def fake_smi(scratch: Path) -> Path:
    """The fake nvidia-smi's directory (8 GPUs); its ``bin`` goes first on PATH."""
    directory = scratch / "smi"
    (directory / "procs").mkdir(parents=True)
    (directory / "bin").mkdir()
    (directory / "gpus.json").write_text(json.dumps([{"base_used": 1, "total": 81920, "name": "Fake H100"}] * GPUS))
    if sys.platform == "win32":
        (directory / "bin" / "nvidia-smi.cmd").write_text(f'@"{sys.executable}" "{FAKE_SMI}" %*\r\n')
    else:
        script = directory / "bin" / "nvidia-smi"
        script.write_text(f"#!{sys.executable}\n" + FAKE_SMI.read_text(encoding="utf-8"), encoding="utf-8")
        script.chmod(0o755)
    return directory


def wait_until_up(url: str, process: subprocess.Popen[bytes], timeout: float = 30.0) -> bytes:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url}: the server exited ({process.returncode})")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                body: bytes = response.read()
                return body
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer in {timeout} s")


def pinned_to(core: int | None) -> dict[str, object]:
    """Popen options that start a process on one core (Linux), inherited by all of its threads."""
    if core is None or not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2:
        return {}
    return {"preexec_fn": lambda: os.sched_setaffinity(0, {core})}


@dataclass
class Stack:
    scratch: Path
    config: Path
    smi: Path
    env: dict[str, str]
    port: int
    bare_port: int
    pid_file: Path

    def cli(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "gpuwarden", "--config", str(self.config), *args]

    def set_smi_delay(self, seconds: float) -> None:
        (self.smi / "delay").write_text(str(seconds))

    def smi_calls(self) -> int:
        calls = self.smi / "calls"
        return len(calls.read_text().splitlines()) if calls.exists() else 0

    def naive_render_ms(self, path: str, repeats: int = 50) -> float:
        """One render of ``path``'s body, as every request cost before it was rendered once per change."""
        os.environ["PATH"] = self.env["PATH"]
        os.environ["FAKE_SMI_DIR"] = self.env["FAKE_SMI_DIR"]
        sys.path.insert(0, str(ROOT / "src"))
        from gpuwarden.config import load_settings
        from gpuwarden.controller import build_controller
        from gpuwarden.people import Actor, Channel
        from gpuwarden.web.context import content_context
        from gpuwarden.web.templating import templates

        controller = build_controller(load_settings(self.config))
        snapshot = controller.snapshot()
        actor = Actor(None, admin=False, channel=Channel.WEB, client="127.0.0.1")
        template = templates.get_template("_content.html")
        from gpuwarden.accounts import build_accounts
        accounts = build_accounts(controller.settings)

        def render() -> object:
            if path == "/api/gpus":
                return json.dumps(controller.status_of(snapshot).to_dict()).encode()
            return template.render(content_context(controller, accounts, actor, controller.status_of(snapshot)))

        render()
        started = time.perf_counter()
        for _ in range(repeats):
            render()
        return (time.perf_counter() - started) * 1000 / repeats


@contextmanager
def start_stack(scratch: Path, server_core: int | None) -> Iterator[Stack]:
    smi = fake_smi(scratch)
    env = {**os.environ, "PATH": f"{smi / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
           "FAKE_SMI_DIR": str(smi), "PYTHONPATH": str(ROOT / "src")}
    config = write_config(scratch)
    port, bare_port = free_port(), free_port()
    log = (scratch / "server.log").open("wb")
    serve = [sys.executable, "-m", "gpuwarden", "--config", str(config), "serve", "--port", str(port)]
    server = subprocess.Popen(serve, env=env, stdout=log, stderr=subprocess.STDOUT, **pinned_to(server_core))  # type: ignore[call-overload]
    bare = None
    try:
        bodies = {}
        for path, name in (("/api/gpus", "gpus.json"), ("/dashboard/refresh", "refresh.html")):
            (scratch / name).write_bytes(wait_until_up(f"http://127.0.0.1:{port}{path}", server))
            bodies[path] = scratch / name
        bare = subprocess.Popen([sys.executable, str(ROOT / "bench" / "bare_app.py"), str(bare_port),
                                 *(f"{path}={file}" for path, file in bodies.items())],
                                env=env, stdout=log, stderr=subprocess.STDOUT, **pinned_to(server_core))  # type: ignore[call-overload]
        wait_until_up(f"http://127.0.0.1:{bare_port}/api/gpus", bare)
        pid_file = scratch / "server.pid"
        pid_file.write_text(str(server.pid))
        yield Stack(scratch, config, smi, env, port, bare_port, pid_file)
    finally:
        for process in (bare, server):
            if process is not None:
                process.terminate()
                process.wait(timeout=15)
        log.close()


def install_size_mib(project: Path) -> float:
    """site-packages of a fresh virtual environment with gpuwarden installed, less pip and setuptools."""
    with tempfile.TemporaryDirectory(prefix="gw-install-") as scratch:
        venv = Path(scratch) / "venv"
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        python = venv / ("Scripts/python.exe" if sys.platform == "win32" else "bin/python")
        subprocess.run([str(python), "-m", "pip", "install", "-q", str(project)], check=True)
        site = next(venv.glob("lib/python*/site-packages"), venv / "Lib" / "site-packages")
        total = 0
        for entry in site.iterdir():
            if entry.name.split("-")[0].lower() in ("pip", "setuptools", "_distutils_hack", "distutils-precedence.pth"):
                continue
            files = entry.rglob("*") if entry.is_dir() else [entry]
            total += sum(f.stat().st_size for f in files if f.is_file())
        shutil.rmtree(venv, ignore_errors=True)
        return total / 2**20
