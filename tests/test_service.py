"""``gpuwarden service``: the systemd unit and the scheduled task (pure), and install / status /
uninstall end to end through the real subprocess path, with a fake ``systemctl`` or ``schtasks`` first
on PATH that records how it was called."""

from __future__ import annotations

import io
import json
import os
import stat
import sys
import xml.etree.ElementTree as ET
from pathlib import Path, PurePosixPath, PureWindowsPath

import pytest

from gpuwarden.cli import main
from gpuwarden.service.plan import (
    Platform,
    ServiceSpec,
    Step,
    install_steps,
    systemd_quote,
    systemd_unit,
    task_xml,
    uninstall_steps,
)
from gpuwarden.service.system import FakeServiceSystem, carry_out

TASK = "{http://schemas.microsoft.com/windows/2004/02/mit/task}"
CONFIG = PurePosixPath("/srv/gpu lab/gpuwarden.toml")


def test_the_systemd_unit_keeps_models_running_and_restarts_gpuwarden() -> None:
    unit = systemd_unit(ServiceSpec("/opt/venv/bin/python", CONFIG, system=False))
    assert 'ExecStart=/opt/venv/bin/python -m gpuwarden --config "/srv/gpu lab/gpuwarden.toml" serve' in unit
    assert "WorkingDirectory=/srv/gpu lab\n" in unit  # systemd takes this one as it is: quotes would be kept
    assert "RestartPreventExitStatus=2" in unit  # a configuration error is not mended by restarting
    assert "KillMode=process" in unit and "Restart=on-failure" in unit and "WantedBy=default.target" in unit
    assert "User=" not in unit
    system = systemd_unit(ServiceSpec("/usr/bin/python3", CONFIG, system=True, account="gpuwarden"))
    assert "User=gpuwarden\n" in system and "WantedBy=multi-user.target" in system


@pytest.mark.parametrize(("word", "quoted"), [
    ("plain", "plain"), ("two words", '"two words"'), ("50%", "50%%"), ('say "hi"', '"say \\"hi\\""'),
    ("C:\\x y", '"C:\\\\x y"'), ("", '""'), ("$HOME/x", '"$$HOME/x"'),
])
def test_systemd_quoting(word: str, quoted: str) -> None:
    assert systemd_quote(word) == quoted


def test_the_task_runs_at_boot_as_local_system_without_a_time_limit() -> None:
    config = PureWindowsPath(r"C:\gpu & co\gpuwarden.toml")
    task = ET.fromstring(task_xml(ServiceSpec(r"C:\Python312\python.exe", config, system=True)).split("\n", 1)[1])
    assert task.find(f"{TASK}Triggers/{TASK}BootTrigger") is not None
    assert task.findtext(f"{TASK}Principals/{TASK}Principal/{TASK}UserId") == "S-1-5-18"
    assert task.findtext(f"{TASK}Settings/{TASK}ExecutionTimeLimit") == "PT0S"  # the default ends it after 3 days
    assert task.findtext(f"{TASK}Settings/{TASK}RestartOnFailure/{TASK}Count") == "255"
    assert task.findtext(f"{TASK}Settings/{TASK}Priority") == "4"  # the default 7 is below normal, for models too
    assert task.findtext(f"{TASK}Actions/{TASK}Exec/{TASK}Command") == r"C:\Python312\python.exe"
    assert task.findtext(f"{TASK}Actions/{TASK}Exec/{TASK}Arguments") == (
        r'-m gpuwarden --config "C:\gpu & co\gpuwarden.toml" serve')
    mine_xml = task_xml(ServiceSpec("python.exe", config, system=False, account="LAB\\ana"))
    mine = ET.fromstring(mine_xml.split("\n", 1)[1])
    assert mine.findtext(f"{TASK}Triggers/{TASK}LogonTrigger/{TASK}UserId") == "LAB\\ana"
    assert mine.findtext(f"{TASK}Principals/{TASK}Principal/{TASK}RunLevel") == "LeastPrivilege"


def test_line_breaks_cannot_reach_a_service_definition() -> None:
    with pytest.raises(ValueError, match="line break"):
        ServiceSpec("python", PurePosixPath("/srv/x\nExecStartPre=/bin/evil/gpuwarden.toml"), system=False)


@pytest.mark.skipif(sys.platform != "linux" or not Path("/usr/bin/systemd-analyze").exists(),
                    reason="systemd-analyze is a Linux program, not installed here")
def test_systemd_accepts_the_unit(tmp_path: Path) -> None:
    import subprocess

    config = tmp_path / "gpu lab" / "gpuwarden.toml"
    config.parent.mkdir()
    config.write_text("", encoding="utf-8")
    unit = tmp_path / "gpuwarden.service"
    unit.write_text(systemd_unit(ServiceSpec(sys.executable, config, system=False)), encoding="utf-8")
    done = subprocess.run(["/usr/bin/systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr  # e.g. a quoted WorkingDirectory= is "not absolute": fatal


def test_steps_stop_at_the_first_failure_unless_it_may_fail(tmp_path: Path) -> None:
    spec = ServiceSpec("python", CONFIG, system=False)
    steps = install_steps(spec, Platform.LINUX, home=tmp_path, task_file=tmp_path / "t.xml")
    assert [s.argv for s in steps[1:]] == [("systemctl", "--user", "daemon-reload"),
                                          ("systemctl", "--user", "enable", "gpuwarden.service"),
                                          ("systemctl", "--user", "restart", "gpuwarden.service")]
    failing = FakeServiceSystem(answer=lambda step: (1, "Failed to connect to bus") if "daemon-reload" in step.argv
                                else (0, ""))
    results = carry_out(failing, steps)
    assert len(results) == 2 and results[-1].output == "Failed to connect to bus"
    stopped_already = FakeServiceSystem(answer=lambda step: (5, "not loaded") if "disable" in step.argv else (0, ""))
    uninstall = uninstall_steps(False, Platform.LINUX, home=tmp_path)
    assert len(carry_out(stopped_already, uninstall)) == 3  # disabling what is not running may fail
    windows = uninstall_steps(True, Platform.WINDOWS, home=tmp_path)
    assert windows[-1] == Step(("schtasks", "/Delete", "/TN", "gpuwarden", "/F"))


# ----------------------------------------------------------------- end to end, real subprocesses

RECORDER = "import json, os, sys\n" \
    "with open(os.environ['FAKE_SERVICE_LOG'], 'a', encoding='utf-8') as log:\n" \
    "    log.write(json.dumps([os.path.basename(sys.argv[0])] + sys.argv[1:]) + '\\n')\n" \
    "fail = os.environ.get('FAKE_SERVICE_FAIL', '')\n" \
    "print('failing as asked' if fail and fail in sys.argv else 'ok from fake')\n" \
    "sys.exit(1 if fail and fail in sys.argv else 0)\n"


def fake_program(folder: Path, name: str) -> None:
    script = folder / f"{name}.py"
    script.write_text(RECORDER, encoding="utf-8")
    if sys.platform == "win32":
        (folder / f"{name}.cmd").write_text(f'@"{sys.executable}" "{script}" %*\r\n', encoding="utf-8")
    else:
        launcher = folder / name
        launcher.write_text(f"#!{sys.executable}\n" + RECORDER, encoding="utf-8")
        launcher.chmod(launcher.stat().st_mode | stat.S_IXUSR)


@pytest.fixture
def service_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "bin"
    folder.mkdir()
    fake_program(folder, "schtasks" if sys.platform == "win32" else "systemctl")
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.setenv("FAKE_SERVICE_LOG", str(tmp_path / "calls.jsonl"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("USERPROFILE", str(tmp_path / "home"))
    for key in [k for k in os.environ if k.startswith("GPUWARDEN_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("GPUWARDEN_CONFIG", str(tmp_path / "gpuwarden.toml"))
    (tmp_path / "gpuwarden.toml").write_text("port = 8123\n", encoding="utf-8")
    monkeypatch.setenv("GPUWARDEN_STATE_DIR", str(tmp_path / "state"))  # seen by the CLI, not by a service
    return tmp_path


def calls(root: Path) -> list[list[str]]:
    log = root / "calls.jsonl"
    lines = log.read_text(encoding="utf-8").splitlines() if log.exists() else []
    return [json.loads(line)[1:] for line in lines]


def service(root: Path, *args: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(["service", *args])  # the configuration named by GPUWARDEN_CONFIG
    out, err = capsys.readouterr()
    return code, out, err


def test_install_status_and_uninstall_end_to_end(service_env: Path, capsys: pytest.CaptureFixture[str],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    code, out, err = service(service_env, "install", capsys=capsys)
    assert code == 0, err
    config = str((service_env / "gpuwarden.toml").absolute())
    if sys.platform == "win32":
        task_file = service_env / "state" / "gpuwarden-task.xml"
        assert config in task_file.read_text(encoding="utf-16")
        assert calls(service_env) == [["/Create", "/TN", "gpuwarden", "/XML", str(task_file), "/F"],
                                      ["/End", "/TN", "gpuwarden"], ["/Run", "/TN", "gpuwarden"]]
    else:
        unit = service_env / "home" / ".config" / "systemd" / "user" / "gpuwarden.service"
        assert f"--config {systemd_quote(config)} serve" in unit.read_text(encoding="utf-8")
        assert calls(service_env) == [["--user", "daemon-reload"], ["--user", "enable", "gpuwarden.service"],
                                      ["--user", "restart", "gpuwarden.service"]]
        assert "loginctl enable-linger" in out
    assert "installed: gpuwarden starts at your logon" in out
    assert "does not see GPUWARDEN_STATE_DIR" in err
    code, out, _ = service(service_env, "status", capsys=capsys)
    assert code == 0 and "ok from fake" in out
    code, out, _ = service(service_env, "uninstall", capsys=capsys)
    assert code == 0 and "uninstalled" in out
    if sys.platform != "win32":
        assert not unit.exists()
        assert calls(service_env)[-2:] == [["--user", "disable", "--now", "gpuwarden.service"],
                                           ["--user", "daemon-reload"]]
    else:
        assert calls(service_env)[-1] == ["/Delete", "/TN", "gpuwarden", "/F"]


def test_a_failing_step_is_named_and_nothing_is_claimed(service_env: Path, capsys: pytest.CaptureFixture[str],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_SERVICE_FAIL", "/Create" if sys.platform == "win32" else "enable")
    code, out, err = service(service_env, "install", capsys=capsys)
    assert code == 1 and "install failed at" in err and "installed:" not in out
    assert "failing as asked" in out


def test_install_refuses_what_it_cannot_do_well(service_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["--config", str(service_env / "missing.toml"), "service", "install"])
    assert code == 2 and "does not exist" in capsys.readouterr().err
    code, _, err = service(service_env, "install", "--system", "--user", "gpuwarden", capsys=capsys)
    assert code == 2 and "set state_dir in" in err  # the service's account would get another state database
    if sys.platform != "win32":
        code, _, err = service(service_env, "install", "--system", capsys=capsys)
        assert code == 2 and "--system needs --user ACCOUNT" in err
    assert calls(service_env) == []
