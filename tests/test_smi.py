"""The real subprocess path, driven by a fake nvidia-smi first on PATH."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from gpuwarden.probe.smi import NvidiaSmiFailed, NvidiaSmiNotFound, find_nvidia_smi, windows_candidates
from gpuwarden.probe.sources import SmiSource
from gpuwarden.probe.users import DENIED, NOT_HERE, ProcessOwner, PsutilLookup, names_match, with_users
from gpuwarden.records import GpuProcess
from tests.conftest import UNDER_WINE, WINE_HIDES_USERS, FakeSmi


def source(timeout: float = 10.0, path: Path | None = None) -> SmiSource:
    return SmiSource(configured_path=path, timeout_seconds=timeout, lookup=PsutilLookup())


def test_normal_output_with_a_real_process_and_its_user(fake_smi: FakeSmi) -> None:
    foreign = fake_smi.add_foreign("1", mib=400, name="python3")
    snapshot = source().snapshot()
    assert snapshot.error is None
    assert [(g.index, g.memory_used_mib, g.uuid) for g in snapshot.gpus] == [(0, 1, "GPU-fake-0000"),
                                                                              (1, 401, "GPU-fake-0001")]
    [process] = snapshot.processes
    assert (process.pid, process.gpu_index, process.used_memory_mib) == (foreign.pid, 1, 400)
    assert process.user or UNDER_WINE  # the OS knows who runs it (WINE_HIDES_USERS)
    assert fake_smi.calls == 1


def test_table_output_works_too(fake_smi: FakeSmi) -> None:
    fake_smi.set_mode("table")
    fake_smi.add_foreign("0", mib=900)
    snapshot = source().snapshot()
    assert [(g.index, g.memory_used_mib) for g in snapshot.gpus] == [(0, 901), (1, 1)]
    assert len(snapshot.processes) == 1


def test_nonzero_exit_with_error_message_is_cpu_mode_with_reason(fake_smi: FakeSmi) -> None:
    fake_smi.set_mode("fail")
    snapshot = source().snapshot()
    assert snapshot.gpus == ()
    assert snapshot.error is not None and "couldn't communicate with the NVIDIA driver" in snapshot.error


def test_hang_past_timeout_does_not_hang_us(fake_smi: FakeSmi) -> None:
    fake_smi.set_mode("hang")
    started = time.monotonic()
    snapshot = source(timeout=1.0).snapshot()
    assert time.monotonic() - started < 6
    assert snapshot.error is not None and "did not answer within 1 s" in snapshot.error


def test_garbage_output(fake_smi: FakeSmi) -> None:
    fake_smi.set_mode("garbage")
    snapshot = source().snapshot()
    assert snapshot.gpus == () and snapshot.error is not None and "cannot read nvidia-smi output" in snapshot.error


def test_missing_binary(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    snapshot = source().snapshot()
    assert snapshot.gpus == () and snapshot.error is not None and "nvidia-smi not found" in snapshot.error


def test_configured_path_wins_and_must_exist(fake_smi: FakeSmi, tmp_path: Path) -> None:
    program = fake_smi.bin / ("nvidia-smi.cmd" if sys.platform == "win32" else "nvidia-smi")
    assert find_nvidia_smi(program) == program
    with pytest.raises(NvidiaSmiFailed, match="does not exist"):  # a wrong path is a failure, not "no driver"
        find_nvidia_smi(tmp_path / "missing.exe")


def test_windows_locations_are_searched(tmp_path: Path) -> None:
    system32 = tmp_path / "Windows" / "System32"
    system32.mkdir(parents=True)
    environ = {"PATH": str(tmp_path / "empty"), "SystemRoot": str(tmp_path / "Windows"),
               "ProgramFiles": str(tmp_path / "Program Files")}
    with pytest.raises(NvidiaSmiNotFound, match="NVSMI"):
        find_nvidia_smi(None, environ, platform="win32")
    nvsmi = tmp_path / "Program Files" / "NVIDIA Corporation" / "NVSMI"
    nvsmi.mkdir(parents=True)
    (nvsmi / "nvidia-smi.exe").write_text("", encoding="utf-8")
    assert find_nvidia_smi(None, environ, platform="win32") == nvsmi / "nvidia-smi.exe"
    (system32 / "nvidia-smi.exe").write_text("", encoding="utf-8")
    assert find_nvidia_smi(None, environ, platform="win32") == system32 / "nvidia-smi.exe"
    assert windows_candidates({})[0] == Path(r"C:\Windows") / "System32" / "nvidia-smi.exe"


@pytest.mark.parametrize(("smi_name", "candidates", "expected"), [
    ("python3", ["python3"], True),
    ("/usr/bin/python3", ["python3", "/usr/bin/python3.11"], True),
    ("...al\\Programs\\Ollama\\ollama.exe", ["ollama.exe"], True),
    ("VLLM::Worker_TP0", ["VLLM::Worker_T"], True),
    ("python3", ["bash", "/usr/bin/bash"], False),
    ("Insufficient Permissions", ["anything"], True),
])
def test_names_match(smi_name: str, candidates: list[str], expected: bool) -> None:
    assert names_match(smi_name, candidates) is expected


def test_user_not_claimed_for_a_pid_that_is_another_program() -> None:
    import os

    owner = PsutilLookup().user_of(os.getpid(), "definitely-not-this-program.exe")
    assert owner.user is None
    if not UNDER_WINE:  # under Wine psutil cannot read the name at all: unknown for that reason instead
        assert owner == ProcessOwner(None, NOT_HERE)


@pytest.mark.skipif(UNDER_WINE, reason=WINE_HIDES_USERS)
def test_a_denied_owner_is_unknown_with_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    """Windows denies other accounts' process owners to a non-administrator: no crash, a reason."""
    import os

    import psutil

    def denied(self: psutil.Process) -> str:
        raise psutil.AccessDenied(self.pid)

    monkeypatch.setattr(psutil.Process, "username", denied)
    owner = PsutilLookup().user_of(os.getpid(), psutil.Process().name())
    assert owner == ProcessOwner(None, DENIED)
    processes = with_users([GpuProcess(pid=os.getpid(), name=psutil.Process().name())], PsutilLookup())
    assert (processes[0].user, processes[0].user_unknown) == (None, DENIED)
    assert "administrator" in DENIED or sys.platform != "win32"
