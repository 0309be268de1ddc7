"""Shared test fixtures: recorded outputs, a fake nvidia-smi on PATH, fake models, settings."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from gpuwarden.config import Settings, load_settings

TESTS = Path(__file__).parent
FIXTURES = TESTS / "fixtures" / "nvidia-smi"
PUBLIC = FIXTURES / "public"
H200 = FIXTURES / "h200-driver-580"
FAKES = TESTS / "fakes"
FAKE_MODEL = FAKES / "fake_model.py"
REPO = TESTS.parent


def under_wine() -> bool:
    """True in a Windows Python running under Wine (not on real Windows): ntdll exports wine_get_version."""
    if sys.platform != "win32":
        return False
    import ctypes

    return hasattr(ctypes.WinDLL("ntdll"), "wine_get_version")


UNDER_WINE = under_wine()
# Wine, not Windows: psutil cannot read a process's name or user there, so users come back empty.
WINE_HIDES_USERS = "under Wine psutil cannot read process names and users (real Windows can)"
# How a process killed from outside ends: -9 on POSIX; TerminateProcess's exit code on Windows.
KILLED_EXIT_CODE = -9 if sys.platform != "win32" else None


def model_command(*extra: str) -> list[str]:
    return [sys.executable, str(FAKE_MODEL), *extra]


class FakeSmi:
    """Controls the fake nvidia-smi placed first on PATH."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        (directory / "procs").mkdir(parents=True, exist_ok=True)
        self.bin = directory / "bin"
        self.bin.mkdir()
        source = FAKES / "fake_nvidia_smi.py"
        if sys.platform == "win32":  # found through PATHEXT, as nvidia-smi.exe would be
            (self.bin / "nvidia-smi.cmd").write_text(f'@"{sys.executable}" "{source}" %*\r\n', encoding="utf-8")
        else:
            script = self.bin / "nvidia-smi"
            script.write_text(f"#!{sys.executable}\n" + source.read_text(encoding="utf-8"), encoding="utf-8")
            script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        self.set_gpus(2)
        self._foreign: list[subprocess.Popen[bytes]] = []

    def set_gpus(self, count: int, base_used: int = 1, total: int = 24564) -> None:
        (self.dir / "gpus.json").write_text(json.dumps(
            [{"base_used": base_used, "total": total, "name": "Fake GPU"} for _ in range(count)]), encoding="utf-8")

    def set_mode(self, mode: str) -> None:
        (self.dir / "mode").write_text(mode, encoding="utf-8")

    def set_delay(self, seconds: float) -> None:
        (self.dir / "delay").write_text(str(seconds), encoding="utf-8")

    @property
    def calls(self) -> int:
        path = self.dir / "calls"
        return len(path.read_text(encoding="utf-8").splitlines()) if path.exists() else 0

    def add_foreign(self, gpus: str, mib: int = 400, name: str = "python3") -> subprocess.Popen[bytes]:
        """Start a foreign process that shows on ``gpus``; waits until it has registered."""
        process = subprocess.Popen([*model_command("--gpus", gpus, "--mib", str(mib), "--name", name)],
                                   stdout=subprocess.DEVNULL, env={**os.environ})
        self._foreign.append(process)
        marker = self.dir / "procs" / f"{process.pid}.json"
        for _ in range(200):
            if marker.exists():
                break
            time.sleep(0.02)
        return process

    def registered_pids(self) -> list[int]:
        return [int(p.stem) for p in (self.dir / "procs").glob("*.json")]

    def cleanup(self) -> None:
        for process in self._foreign:
            process.kill()
            process.wait(5)
        for pid in self.registered_pids():
            with contextlib.suppress(psutil.Error):
                psutil.Process(pid).kill()


@pytest.fixture
def fake_smi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeSmi]:
    fake = FakeSmi(tmp_path / "fake-smi")
    monkeypatch.setenv("PATH", str(fake.bin) + os.pathsep + os.environ.get("PATH", ""))
    monkeypatch.setenv("FAKE_SMI_DIR", str(fake.dir))
    for key in list(os.environ):
        if key.startswith("GPUWARDEN_"):
            monkeypatch.delenv(key)
    yield fake
    fake.cleanup()


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (for a server a test starts)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` seconds pass; its last answer."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def make_settings(state_dir: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {"state_dir": state_dir}
    values.update(overrides)
    return load_settings(None, environ={}, overrides=values)


FAKE_MODELS: list[dict[str, Any]] = [
    {"name": "alpha", "command": model_command("--mib", "600"), "startup_grace_seconds": 0.3},
    {"name": "beta", "command": model_command("--mib", "700"), "startup_grace_seconds": 0.3},
    {"name": "gamma", "command": model_command("--mib", "300", "--child"), "default_gpus": 2,
     "startup_grace_seconds": 0.3},
]


@pytest.fixture(autouse=True)
def _no_leftover_processes(tmp_path: Path) -> Iterator[None]:
    """Whatever a test started under its tmp_path (models, their launchers) ends with the test."""
    yield
    marker = str(tmp_path)
    leftovers = []
    for process in psutil.process_iter(["cmdline"]):
        try:
            if any(marker in part for part in process.info["cmdline"] or []):
                leftovers.append(process)
        except psutil.Error:
            continue
    for process in leftovers:
        try:
            members = [*process.children(recursive=True), process]
        except psutil.Error:  # it ended meanwhile
            continue
        for member in members:
            with contextlib.suppress(psutil.Error):
                member.kill()
    psutil.wait_procs(leftovers, timeout=5)
