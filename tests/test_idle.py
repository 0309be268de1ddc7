"""Idle models (rules.idle_since, rules.idle_reason, Controller.unload_idle): a model whose GPUs stay
at or below its idle_utilization_percent is marked, and unloaded after its idle_unload_minutes; a busy
one, one whose GPUs' utilization is unknown, and one without the setting are not. Fast: the fake
process host, a mock nvidia-smi whose utilization the test writes, and a clock the test moves."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from gpuwarden.accounts import build_accounts
from gpuwarden.config import ModelConfig
from gpuwarden.controller import Controller
from gpuwarden.people import Actor, AuditAction, Channel
from gpuwarden.probe.mock import MockSource
from gpuwarden.probe.shared import Freshness
from gpuwarden.records import ModelState, Selection
from gpuwarden.store import Store
from gpuwarden.web.context import content_context
from gpuwarden.web.templating import templates
from tests.test_controller_lifecycle import Rig

COLUMNS = ("index", "memory.used", "utilization.gpu")
MODELS = [
    {"name": "lazy", "command": ["server"], "startup_grace_seconds": 1, "idle_unload_minutes": 30},
    {"name": "kept", "command": ["server"], "startup_grace_seconds": 1},
    {"name": "picky", "command": ["server"], "startup_grace_seconds": 1, "idle_unload_minutes": 30,
     "idle_utilization_percent": 0},
]
ALICE = Actor("alice", admin=False, channel=Channel.CLI)


class IdleRig(Rig):
    """The lifecycle rig, its GPUs' utilization written by the test (a file mock nvidia-smi re-reads)."""

    def __init__(self, state_dir: Path) -> None:
        self.smi_file = state_dir.parent / "smi.csv"
        self.utilization(0, 0, 0)
        super().__init__(state_dir, models=MODELS)

    def utilization(self, *percent: int | None) -> None:
        rows = [f"{index}, 1 MiB, {'[N/A]' if value is None else f'{value} %'}" for index, value in enumerate(percent)]
        self.smi_file.write_text("\n".join(rows) + "\n", encoding="utf-8")

    def new_controller(self) -> Controller:
        source = MockSource(paths=[self.smi_file], columns=COLUMNS, clock=self.clock)
        return Controller(self.settings, source, Store(self.settings.state_dir / "gpuwarden.db"), self.host,
                          clock=self.clock)

    def minutes_pass(self, minutes: int) -> None:
        """Readings every five minutes for ``minutes`` (the monitor's), then supervision's pass."""
        for _ in range(minutes // 5):
            self.clock.advance(300)
            self.controller.snapshot(Freshness.NOW)
        self.controller.reconcile()


def running(rig: IdleRig, name: str, gpu: int) -> None:
    rig.controller.load(name, Selection.gpus(gpu), actor=ALICE)
    rig.clock.advance(2)
    rig.controller.reconcile()
    assert rig.state(name) is ModelState.RUNNING


def test_an_idle_model_is_marked_then_unloaded_and_the_audit_says_why(tmp_path: Path) -> None:
    rig = IdleRig(tmp_path / "state")
    running(rig, "lazy", 0)
    seen_running = rig.clock.now
    rig.minutes_pass(20)
    assert rig.view("lazy").idle_since == seen_running  # idle from when it ran, not from the GPU's last work
    assert rig.controller.unload_idle() == []  # 20 of its 30 minutes
    rig.minutes_pass(10)
    assert rig.controller.unload_idle() == ["lazy"]
    assert rig.state("lazy") is ModelState.STOPPED and rig.host.stops
    with rig.controller.store.read() as tx:
        [entry] = [e for e in tx.audit(20) if e.action is AuditAction.UNLOAD]
    assert entry.detail == ("idle: its GPUs stayed at or below 5% utilization for 30 min (idle_unload_minutes = 30);"
                            " owner alice")


def test_work_on_the_gpu_restarts_the_count(tmp_path: Path) -> None:
    rig = IdleRig(tmp_path / "state")
    running(rig, "lazy", 0)
    rig.minutes_pass(25)
    rig.utilization(40, 0, 0)  # someone sends it a request
    rig.minutes_pass(5)
    rig.utilization(3, 0, 0)  # 3 %: idle by its 5 % measure
    rig.minutes_pass(25)
    assert rig.controller.unload_idle() == [] and rig.state("lazy") is ModelState.RUNNING
    assert rig.view("lazy").idle_since == rig.clock.now - timedelta(minutes=25)
    rig.minutes_pass(5)
    assert rig.controller.unload_idle() == ["lazy"]


def test_unknown_utilization_a_stricter_level_and_no_setting_keep_models_loaded(tmp_path: Path) -> None:
    rig = IdleRig(tmp_path / "state")
    rig.utilization(None, 0, 3)  # GPU 0 reports no utilization (N/A); GPU 2 does a little
    for name, gpu in (("lazy", 0), ("kept", 1), ("picky", 2)):
        running(rig, name, gpu)
    rig.minutes_pass(120)
    assert rig.controller.unload_idle() == []
    views = {view.name: view for view in rig.controller.models()}
    assert views["lazy"].idle_since is None  # N/A is never taken for idle
    assert views["kept"].idle_since is not None  # marked idle, but it has no idle_unload_minutes
    assert views["picky"].idle_since is None  # 3 % is work at its 0 % level
    assert all(view.state is ModelState.RUNNING for view in views.values())
    assert views["kept"].to_dict()["idle_since"] == views["kept"].idle_since.isoformat()


def test_the_dashboard_marks_a_model_idle_past_the_notice(tmp_path: Path) -> None:
    rig = IdleRig(tmp_path / "state")
    running(rig, "kept", 1)
    accounts = build_accounts(rig.settings, rig.controller.store, rig.controller.clock)
    viewer = Actor(None, admin=False, channel=Channel.WEB)

    def fragment() -> str:
        return templates.get_template("_content.html").render(content_context(rig.controller, accounts, viewer))

    rig.minutes_pass(10)
    assert "idle-mark" not in fragment()  # 10 of the 15 notice minutes
    rig.minutes_pass(5)
    since = rig.view("kept").idle_since
    assert since is not None
    mark = f'idle <span class="tick" data-since="{since.strftime("%Y-%m-%dT%H:%M:%SZ")}">15m'
    assert mark in fragment()  # "idle 15m 02s", ticking in the browser from then on
    rig.utilization(0, 60, 0)
    rig.minutes_pass(5)
    assert "idle-mark" not in fragment()  # at work again


def test_a_request_through_the_proxy_is_work_while_it_runs(tmp_path: Path) -> None:
    rig = IdleRig(tmp_path / "state")
    running(rig, "lazy", 0)
    rig.minutes_pass(20)
    rig.controller.requests.started("lazy", rig.clock.now)  # a long answer streams through /models/lazy/
    rig.minutes_pass(60)
    assert rig.controller.unload_idle() == [] and rig.view("lazy").idle_since is None  # busy while it streams
    rig.controller.requests.ended("lazy", rig.clock.now)
    ended = rig.clock.now
    rig.minutes_pass(25)
    assert rig.controller.unload_idle() == [] and rig.view("lazy").idle_since == ended
    rig.minutes_pass(5)
    assert rig.controller.unload_idle() == ["lazy"]


def test_a_slow_start_is_not_idle_time(tmp_path: Path) -> None:
    """Loading weights keeps a GPU at 0 % for minutes: the count starts when the model runs."""
    rig = IdleRig(tmp_path / "state")
    settings_model = {**MODELS[0], "name": "slow", "startup_grace_seconds": 2700,
                      "startup_timeout_seconds": 3600}  # "starting" for 45 minutes
    rig.settings = rig.settings.model_copy(update={"models": (*rig.settings.models, ModelConfig(**settings_model))})
    rig.controller = rig.new_controller()
    rig.controller.load("slow", Selection.gpus(0), actor=ALICE)
    rig.minutes_pass(40)
    assert rig.state("slow") is ModelState.STARTING
    rig.clock.advance(305)
    rig.controller.reconcile()
    assert rig.state("slow") is ModelState.RUNNING
    assert rig.controller.unload_idle() == []  # not 40 idle minutes: it has only just begun to run
    rig.minutes_pass(30)
    assert rig.controller.unload_idle() == ["slow"]


def test_idle_time_runs_to_the_newest_reading_not_the_clock(tmp_path: Path) -> None:
    """A machine that slept for an hour has read nothing meanwhile: it reads the GPUs again first."""
    rig = IdleRig(tmp_path / "state")
    running(rig, "lazy", 0)
    rig.minutes_pass(10)
    rig.clock.advance(3600)  # asleep: no reading
    assert rig.controller.unload_idle() == [] and rig.state("lazy") is ModelState.RUNNING
    rig.utilization(55, 0, 0)  # awake, and the model is at work
    rig.minutes_pass(5)
    assert rig.controller.unload_idle() == []
