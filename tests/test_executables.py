"""Programs are found on PATH only: never in the current folder (Windows' shutil.which looks there
first, so a planted nvidia-smi.cmd could report every GPU as free)."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import pytest

from gpuwarden.executables import find_on_path
from gpuwarden.probe.smi import NvidiaSmiNotFound, find_nvidia_smi


def make_program(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\necho planted\n", encoding="utf-8")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_the_current_folder_is_never_searched(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    make_program(tmp_path / "nvidia-smi")
    make_program(tmp_path / "nvidia-smi.cmd")
    empty = tmp_path / "empty"
    empty.mkdir()
    for platform in ("linux", "win32"):
        assert find_on_path("nvidia-smi", str(empty), environ={}, platform=platform) is None
        assert find_on_path("nvidia-smi", "", environ={}, platform=platform) is None  # empty entry: not "."
    with pytest.raises(NvidiaSmiNotFound):
        find_nvidia_smi(None, {"PATH": str(empty)})


def test_windows_rules_pathext_and_separator(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    cmd = make_program(second / "nvidia-smi.cmd")
    path_env = f"{first};{second}"
    assert find_on_path("nvidia-smi", path_env, environ={"PATHEXT": ".EXE;.CMD"}, platform="win32") == cmd
    assert find_on_path("nvidia-smi", path_env, environ={"PATHEXT": ".EXE"}, platform="win32") is None
    exe = make_program(first / "nvidia-smi.exe")
    assert find_on_path("nvidia-smi", path_env, environ={"PATHEXT": ".EXE;.CMD"}, platform="win32") == exe
    assert find_on_path("nvidia-smi.cmd", path_env, environ={}, platform="win32") == cmd


@pytest.mark.skipif(sys.platform == "win32", reason="the execute bit is POSIX")
def test_posix_needs_the_execute_bit_and_takes_path_order(tmp_path: Path) -> None:
    later = make_program(tmp_path / "later" / "tool")
    plain = tmp_path / "first" / "tool"
    plain.parent.mkdir()
    plain.write_text("not executable", encoding="utf-8")
    assert find_on_path("tool", f"{plain.parent}{os.pathsep}{later.parent}") == later
    assert find_on_path("sub/tool", str(tmp_path)) is None  # a name with a folder is not searched for
