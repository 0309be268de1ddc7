"""``gpuwarden load --wait`` and ``gpuwarden queue`` on the fake nvidia-smi, with a real foreign
process holding the GPU: the CLI waits in line (moving the queue itself, no server running), shows
its position and the holder, and exits 0 once the model runs; it expires, and Ctrl+C withdraws."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from gpuwarden.cli import waiting
from gpuwarden.store import Store
from gpuwarden.waitlist import WaitState
from tests.conftest import FakeSmi, model_command, wait_for
from tests.test_cli import run_cli


def write_config(tmp_path: Path) -> Path:
    config = tmp_path / "g.toml"
    config.write_text(f'state_dir = {json.dumps(str(tmp_path / "state"))}\nunload_timeout_seconds = 3\n'
                      "refresh_interval_seconds = 1\n"
                      '[[models]]\nname = "alpha"\ncommand = ' + json.dumps(model_command()) + "\n"
                      "startup_grace_seconds = 0.2\n", encoding="utf-8")
    return config


def entries(tmp_path: Path) -> list[tuple[int, WaitState]]:
    store = Store(tmp_path / "state" / "gpuwarden.db")
    try:
        with store.read() as tx:
            found = [tx.wait_entry(i) for i in range(1, 10)]
    finally:
        store.close()  # Windows cannot remove a file left open
    return [(entry.id, entry.state) for entry in found if entry is not None]


def test_load_wait_waits_in_line_then_exits_0_once_the_model_runs(
        fake_smi: FakeSmi, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    config = write_config(tmp_path)
    foreign = fake_smi.add_foreign("0", mib=900, name="train.py")
    waiter = subprocess.Popen([sys.executable, "-m", "gpuwarden", "--config", str(config), "load", "alpha", "--gpus",
                               "0", "--wait", "--timeout", "2m"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env={**os.environ, "PYTHONIOENCODING": "utf-8"})
    output: list[str] = []
    reader = threading.Thread(target=lambda: output.extend(line.decode("utf-8") for line in waiter.stdout or ()))
    reader.start()
    try:
        assert wait_for(lambda: any("position 1 for GPU 0" in line for line in output), timeout=60), output
        assert waiter.poll() is None and entries(tmp_path) == [(1, WaitState.WAITING)]
        code, out, _ = run_cli(["--config", str(config), "queue"], {}, capsys, monkeypatch, tmp_path)
        assert code == 0 and "alpha" in out and "GPU 0: occupied by someone else" in out and "train.py" in out
        foreign.kill()
        foreign.wait(10)
        assert waiter.wait(60) == 0, waiter.stderr.read() if waiter.stderr else ""
    finally:
        if waiter.poll() is None:
            waiter.kill()
        reader.join(10)
        run_cli(["--config", str(config), "unload", "alpha"], {}, capsys, monkeypatch, tmp_path)
    text = "".join(output)
    assert "GPU 0 busy: waiting in the queue as request 1 (for up to 2m 00s); Ctrl+C withdraws it" in text
    assert "train.py" in text and "GPU 0 free: alpha is starting" in text
    assert "loaded alpha on GPU 0" in text and "running" in text
    assert entries(tmp_path) == [(1, WaitState.STARTED)]


def test_a_wait_that_times_out_exits_1(fake_smi: FakeSmi, capsys: pytest.CaptureFixture[str],
                                       monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = write_config(tmp_path)
    fake_smi.add_foreign("0", mib=900)
    code, _, err = run_cli(["--config", str(config), "load", "alpha", "--gpus", "0", "--wait", "--timeout", "2s"],
                             {}, capsys, monkeypatch, tmp_path)
    assert code == 1 and re.search(r"request 1 expired: waited \d+s without its GPUs becoming free", err), err
    assert entries(tmp_path) == [(1, WaitState.EXPIRED)]


def test_ctrl_c_withdraws_the_request(fake_smi: FakeSmi, capsys: pytest.CaptureFixture[str],
                                      monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = write_config(tmp_path)
    fake_smi.add_foreign("0", mib=900)

    def interrupted(seconds: float) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(waiting, "pause", interrupted)
    code, out, err = run_cli(["--config", str(config), "load", "alpha", "--gpus", "0", "--wait"], {}, capsys,
                             monkeypatch, tmp_path)
    assert code == 1 and "request 1 withdrawn" in err and "waiting in the queue as request 1 (for up to 1h 00m)" in out
    assert entries(tmp_path) == [(1, WaitState.WITHDRAWN)]


def test_queue_withdraw_and_usage_errors(fake_smi: FakeSmi, capsys: pytest.CaptureFixture[str],
                                         monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = write_config(tmp_path)
    base = ["--config", str(config)]
    code, out, _ = run_cli([*base, "queue"], {}, capsys, monkeypatch, tmp_path)
    assert code == 0 and out.strip() == "no load is waiting for a GPU"
    code, _, err = run_cli([*base, "load", "alpha", "--gpus", "0", "--timeout", "1h"], {}, capsys, monkeypatch,
                           tmp_path)
    assert code == 2 and "--timeout is for --wait" in err
    code, _, err = run_cli([*base, "load", "alpha", "--gpus", "0", "--wait", "--timeout", "soon"], {}, capsys,
                           monkeypatch, tmp_path)
    assert code == 2 and "cannot read 'soon' as a duration" in err
    code, _, err = run_cli([*base, "load", "alpha", "--wait"], {}, capsys, monkeypatch, tmp_path)
    assert code == 1 and "name the GPUs to wait for" in err
    for unknown in ("5", str(10**20)):
        code, _, err = run_cli([*base, "queue", "withdraw", unknown], {}, capsys, monkeypatch, tmp_path)
        assert code == 1 and f"no queued load has id {unknown}" in err
