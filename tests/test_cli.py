"""`gpuwarden status` end to end: every recorded output through GPUWARDEN_MOCK_SMI, the readable
table, exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from gpuwarden.cli import main
from tests.conftest import H200, PUBLIC, REPO
from tests.test_parse import SIDECARS, sidecar_columns


def run_cli(args: list[str], env: dict[str, str], capsys: pytest.CaptureFixture[str],
            monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> tuple[int, str, str]:
    for key in list(os.environ):
        if key.startswith("GPUWARDEN_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("GPUWARDEN_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("sidecar", SIDECARS, ids=lambda p: p.stem)
def test_status_json_for_every_public_fixture(sidecar: Path, capsys: pytest.CaptureFixture[str],
                                              monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    meta = json.loads(sidecar.read_text(encoding="utf-8"))
    env = {"GPUWARDEN_MOCK_SMI": str(sidecar.with_suffix(".txt"))}
    columns = sidecar_columns(meta)
    if columns:
        env["GPUWARDEN_MOCK_SMI_COLUMNS"] = ",".join(columns)
    code, out, _ = run_cli(["status", "--json"], env, capsys, monkeypatch, tmp_path)
    document = json.loads(out)
    expected = meta["expected"]
    no_gpu_here = "No devices were found" in (expected.get("error") or "")
    assert code == (1 if not expected["gpus"] and not no_gpu_here else 0)  # unreadable is not "done"
    assert document["total_gpus"] == len(expected["gpus"])
    if not expected["gpus"]:
        # Only nvidia-smi's "No devices were found" means CPU mode; any other output without GPUs
        # (a driver error, processes but no GPU list) is unreadable: fail closed.
        assert document["mode"] == ("cpu" if no_gpu_here else "unreadable")
        assert document["gpu_status"] == [{"index": "CPU", "state": "idle", "model_name": None,
                                           "select_enabled": True}]
        if expected["error"]:
            assert expected["error"] in document["error"]
        shown = [{"gpu_index": None, "pid": p["pid"], "name": p["process_name"], "type": p["type"],
                  "used_mib": p["used_memory_mib"]} for p in document["unassigned_processes"]]
    else:
        assert document["mode"] == "gpu" and document["error"] is None
        assert [{k: g[k] for k in ("index", "memory_used_mib", "memory_total_mib")}
                for g in document["gpu_status"]] == expected["gpus"]
        shown = [{"gpu_index": g["index"], "pid": p["pid"], "name": p["process_name"], "type": p["type"],
                  "used_mib": p["used_memory_mib"]} for g in document["gpu_status"] for p in g["process_info"]]
        for gpu in document["gpu_status"]:
            busy = gpu["memory_used_mib"] > 30
            assert gpu["state"] == ("occupied_by_others" if busy else "idle")
            assert gpu["select_enabled"] is (not busy)
    assert shown == [{k: p[k] for k in ("gpu_index", "pid", "name", "type", "used_mib")}
                     for p in expected["processes"]]


@pytest.mark.parametrize(("files", "states", "pids"), [
    (["busy_table.txt"], ["occupied_by_others"], [701, 702]),
    (["busy_table_as_other_user.txt"], ["occupied_by_others"], [701, 702]),
    (["idle_table.txt"], ["idle"], []),
    (["busy_q_min_header.txt"], ["occupied_by_others"], []),
    (["idle_q_min.txt"], ["idle"], []),
    (["idle_q_full.txt"], ["idle"], []),
    (["list.txt"], ["unavailable"], []),  # -L has no memory: never called idle
    (["list.txt", "busy_pmon.txt"], ["unavailable"], [701, 702]),
    (["busy_xml.txt"], ["occupied_by_others"], [701, 702]),
    (["idle_xml.txt"], ["idle"], []),
    (["busy_q_min.txt"], ["occupied_by_others"], []),
    (["idle_q_min_nounits.txt"], ["idle"], []),
    (["busy_q_full.txt", "busy_apps.txt"], ["occupied_by_others"], [701, 702]),
    (["idle_q_full.txt", "idle_apps.txt"], ["idle"], []),
])
def test_status_json_for_h200_recordings(files: list[str], states: list[str], pids: list[int],
                                         capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                                         tmp_path: Path) -> None:
    mock = os.pathsep.join(str(H200 / name) for name in files)
    code, out, _ = run_cli(["status", "--json"], {"GPUWARDEN_MOCK_SMI": mock}, capsys, monkeypatch, tmp_path)
    document = json.loads(out)
    assert code == 0
    assert [g["state"] for g in document["gpu_status"]] == states
    assert [p["pid"] for g in document["gpu_status"] for p in g["process_info"]] == pids
    assert document["gpu_status"][0]["memory_total_mib"] in (143771, None)
    # Recorded on another machine: PIDs are not looked up here.
    assert all(p["user"] is None for g in document["gpu_status"] for p in g["process_info"])


@pytest.mark.parametrize(("name", "pids", "error"), [
    ("busy_apps.txt", [701, 702], "nvidia-smi reported no GPU"),
    ("busy_apps_noheader.txt", [701, 702], "nvidia-smi reported no GPU"),
    ("busy_pmon.txt", [701, 702], "nvidia-smi reported no GPU"),
    ("idle_apps.txt", [], "nvidia-smi reported no GPU"),
    ("help_query_gpu.txt", [], "cannot parse mock nvidia-smi output: unrecognised"),
    ("help_query_apps.txt", [], "cannot parse mock nvidia-smi output: unrecognised"),
    ("version.txt", [], "cannot parse mock nvidia-smi output: unrecognised"),
])
def test_h200_outputs_without_gpu_rows_are_unreadable(name: str, pids: list[int], error: str,
                                                       capsys: pytest.CaptureFixture[str],
                                                       monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    code, out, _ = run_cli(["status", "--json"], {"GPUWARDEN_MOCK_SMI": str(H200 / name)}, capsys, monkeypatch,
                           tmp_path)
    document = json.loads(out)
    assert code == 1 and document["mode"] == "unreadable" and document["total_gpus"] == 0
    assert error in document["error"]
    assert [p["pid"] for p in document["unassigned_processes"]] == pids


def test_every_h200_recording_is_covered() -> None:
    covered = {"busy_table.txt", "busy_table_as_other_user.txt", "busy_xml.txt", "idle_xml.txt", "idle_table.txt",
               "busy_q_min.txt", "busy_q_min_header.txt", "idle_q_min.txt", "idle_q_min_nounits.txt",
               "busy_q_full.txt", "idle_q_full.txt", "busy_apps.txt", "idle_apps.txt", "busy_apps_noheader.txt",
               "busy_pmon.txt", "list.txt", "help_query_gpu.txt", "help_query_apps.txt", "version.txt"}
    assert {p.name for p in H200.glob("*.txt")} == covered


def test_seed_example_done_when(tmp_path: Path) -> None:
    """`GPUWARDEN_MOCK_SMI=data/gpu.txt gpuwarden status --json`, as a real process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPUWARDEN_")}
    env.update({"GPUWARDEN_MOCK_SMI": "data/gpu.txt", "GPUWARDEN_STATE_DIR": str(tmp_path)})
    result = subprocess.run([sys.executable, "-m", "gpuwarden", "status", "--json"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=60, check=True)
    document: dict[str, Any] = json.loads(result.stdout)
    assert document["total_gpus"] == 2 and document["mode"] == "gpu"
    gpu0, gpu1 = document["gpu_status"]
    assert (gpu0["index"], gpu0["state"], gpu0["select_enabled"], gpu0["memory_used_mib"]) == (0, "idle", True, 1)
    assert (gpu1["index"], gpu1["state"], gpu1["select_enabled"], gpu1["memory_used_mib"]) == (
        1, "occupied_by_others", False, 363)


def test_readable_table_and_threshold_override(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                                               tmp_path: Path) -> None:
    env = {"GPUWARDEN_MOCK_SMI": str(PUBLIC / "017-rtx3080-576.80-windows-cg.txt")}
    code, out, _ = run_cli(["status"], env, capsys, monkeypatch, tmp_path)
    assert code == 0
    assert "Total GPUs: 1" in out and "occupied by someone else" in out
    assert "PID 2144" in out and "ollama.exe" in out and "N/A" in out
    code, out, _ = run_cli(["status", "--threshold", "1000", "--json"], env, capsys, monkeypatch, tmp_path)
    assert json.loads(out)["gpu_status"][0]["state"] == "idle"
    assert json.loads(out)["threshold_mib"] == 1000


def test_cpu_mode_exit_zero_with_reason(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                                        tmp_path: Path) -> None:
    env = {"GPUWARDEN_MOCK_SMI": str(PUBLIC / "027-error-no-devices-found.txt")}
    code, out, _ = run_cli(["status"], env, capsys, monkeypatch, tmp_path)
    assert code == 0
    assert "CPU Mode (No GPU Detected)" in out and "No devices were found" in out


def test_mock_text_and_unreadable_mock(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                                       tmp_path: Path) -> None:
    code, out, _ = run_cli(["status", "--json"], {"GPUWARDEN_MOCK_SMI_TEXT": "0, 1 MiB\n1, 363 MiB"}, capsys,
                           monkeypatch, tmp_path)
    assert [g["state"] for g in json.loads(out)["gpu_status"]] == ["idle", "occupied_by_others"]
    code, out, _ = run_cli(["status", "--json"], {"GPUWARDEN_MOCK_SMI": str(tmp_path / "nope.txt")}, capsys,
                           monkeypatch, tmp_path)
    document = json.loads(out)
    assert code == 1 and document["mode"] == "unreadable" and "cannot read mock" in document["error"]


def test_process_names_cannot_inject_terminal_escapes(capsys: pytest.CaptureFixture[str],
                                                      monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    text = "index, memory.used\n0, 500\n"
    apps = "gpu_uuid, pid, process_name, used_memory\nGPU-x, 5, \x1b[31mevil\x1b[0m, 10\n"
    (tmp_path / "g.csv").write_text("index, uuid, memory.used\n0, GPU-x, 500\n", encoding="utf-8")
    (tmp_path / "a.csv").write_text(apps, encoding="utf-8")
    del text
    env = {"GPUWARDEN_MOCK_SMI": os.pathsep.join([str(tmp_path / "g.csv"), str(tmp_path / "a.csv")])}
    code, out, _ = run_cli(["status"], env, capsys, monkeypatch, tmp_path)
    assert code == 0 and "\x1b" not in out and "?[31mevil" in out


@pytest.mark.parametrize(("env", "message"), [
    ({"GPUWARDEN_MEMORY_THRESHOLD_MIB": "thirty"}, "GPUWARDEN_MEMORY_THRESHOLD_MIB"),
    ({"GPUWARDEN_REFRESH_INTERVAL_SECONDS": "-3"}, "refresh_interval_seconds"),
])
def test_bad_config_exits_2_naming_the_key(env: dict[str, str], message: str, capsys: pytest.CaptureFixture[str],
                                           monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    code, _, err = run_cli(["status"], env, capsys, monkeypatch, tmp_path)
    assert code == 2 and message in err


def test_bad_config_file_exits_2(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                                 tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("memory_threshold_mib = [1]\n", encoding="utf-8")
    code, _, err = run_cli(["--config", str(config), "status"], {}, capsys, monkeypatch, tmp_path)
    assert code == 2 and "'memory_threshold_mib'" in err and str(config) in err


def test_models_load_unload_commands(fake_smi: Any, capsys: pytest.CaptureFixture[str],
                                     monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from tests.conftest import model_command

    config = tmp_path / "g.toml"
    config.write_text(f'state_dir = {json.dumps(str(tmp_path / "state"))}\nunload_timeout_seconds = 3\n'
                      '[[models]]\nname = "alpha"\ncommand = ' + json.dumps(model_command()) + "\n"
                      "startup_grace_seconds = 0.2\ndefault_gpus = 2\n", encoding="utf-8")
    base = ["--config", str(config)]
    code, out, _ = run_cli([*base, "models"], {}, capsys, monkeypatch, tmp_path)
    assert code == 0 and "alpha" in out and "not_loaded" in out
    code, out, _ = run_cli([*base, "load", "alpha"], {}, capsys, monkeypatch, tmp_path)  # default: 2 idle GPUs
    assert code == 0 and "loaded alpha on GPU 0,1" in out
    code, out, _ = run_cli([*base, "status"], {}, capsys, monkeypatch, tmp_path)
    assert out.count("model loaded: alpha") == 2
    code, out, err = run_cli([*base, "load", "alpha", "--gpus", "0"], {}, capsys, monkeypatch, tmp_path)
    assert code == 1 and "already loaded" in err
    code, out, _ = run_cli([*base, "models", "--json"], {}, capsys, monkeypatch, tmp_path)
    [view] = json.loads(out)
    assert view["gpus"] == [0, 1] and view["pid"] and view["state"] in ("starting", "running")
    code, out, _ = run_cli([*base, "unload", "alpha"], {}, capsys, monkeypatch, tmp_path)
    assert code == 0 and "unloaded alpha" in out
    code, _, err = run_cli([*base, "unload", "alpha"], {}, capsys, monkeypatch, tmp_path)
    assert code == 1 and "not loaded" in err
    code, _, err = run_cli([*base, "load", "nope"], {}, capsys, monkeypatch, tmp_path)
    assert code == 1 and "unknown model" in err


def test_an_unknown_variable_is_a_warning_not_an_exit(capsys: pytest.CaptureFixture[str],
                                                      monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    env = {"GPUWARDEN_MOCK_SMI_TEXT": "0, 1 MiB\n", "GPUWARDEN_REFRESH_INTERVAL": "60"}
    code, out, err = run_cli(["status"], env, capsys, monkeypatch, tmp_path)
    assert code == 0 and "Total GPUs: 1" in out
    assert err.strip() == ("gpuwarden: warning: ignoring unknown environment variable GPUWARDEN_REFRESH_INTERVAL;"
                           " did you mean GPUWARDEN_REFRESH_INTERVAL_SECONDS?")


@pytest.mark.parametrize("encoding", ["cp1252", "ascii"])
def test_output_to_a_file_in_a_narrow_code_page_never_crashes(tmp_path: Path, encoding: str) -> None:
    """Windows encodes redirected output in the ANSI code page: names outside it must not crash."""
    (tmp_path / "g.csv").write_text("index, uuid, memory.used\n0, GPU-x, 500\n", encoding="utf-8")
    (tmp_path / "a.csv").write_text("gpu_uuid, pid, process_name, used_memory\nGPU-x, 5, 模型服务 ✓ \ufffd, 10\n",
                                    encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPUWARDEN_")}
    env.update({"GPUWARDEN_MOCK_SMI": os.pathsep.join([str(tmp_path / "g.csv"), str(tmp_path / "a.csv")]),
                "GPUWARDEN_STATE_DIR": str(tmp_path / "state"), "PYTHONIOENCODING": encoding})
    for args in (["status"], ["status", "--json"], ["models"]):
        result = subprocess.run([sys.executable, "-m", "gpuwarden", *args], cwd=REPO, env=env,
                                capture_output=True, timeout=60, check=False)
        assert result.returncode == 0, (args, result.stderr.decode("utf-8", "replace"))
    assert b"PID 5" in subprocess.run([sys.executable, "-m", "gpuwarden", "status"], cwd=REPO, env=env,
                                      capture_output=True, timeout=60, check=False).stdout
