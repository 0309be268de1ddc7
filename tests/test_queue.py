"""The queue of loads waiting for busy GPUs (Controller.load_or_wait, advance_queue, withdraw): a
queued load starts within one reading of its GPUs becoming idle and never while they are busy,
waiters on one GPU start in order, a load waiting for two GPUs is not overtaken, a timeout expires
cleanly, and the queue survives a restart. Fast: the fake process host, a mock nvidia-smi whose
memory the test writes, and a clock the test moves."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gpuwarden.controller import Controller
from gpuwarden.errors import BadSelection, GpusBusy, LoadRefused, NotPermitted, NotWaiting, UnknownWaitRequest
from gpuwarden.people import Actor, AuditAction, AuditEntry, AuditResult, AuthMode, Channel
from gpuwarden.probe.mock import MockSource
from gpuwarden.probe.shared import Freshness
from gpuwarden.records import ModelState, ModelView, Selection
from gpuwarden.store import Store
from gpuwarden.waitlist import WaitEntry, WaitState
from tests.conftest import make_settings
from tests.test_controller_lifecycle import Rig

COLUMNS = ("index", "memory.used", "memory.total")
MODELS = [{"name": name, "command": ["server"], "startup_grace_seconds": 1} for name in ("alpha", "beta", "gamma")]
ALICE = Actor("alice", admin=False, channel=Channel.WEB, client="10.0.0.5")
BOB = Actor("bob", admin=False, channel=Channel.WEB, client="10.0.0.6")
ADMIN = Actor("root", admin=True, channel=Channel.WEB)
BUSY, FREE = 20_000, 1


class QueueRig(Rig):
    """The lifecycle rig on three GPUs whose memory use the test writes (someone else's job)."""

    def __init__(self, state_dir: Path, **settings: Any) -> None:
        self.smi_file = state_dir.parent / "smi.csv"
        self.memory(FREE, FREE, FREE)
        super().__init__(state_dir, models=MODELS)
        self.settings = make_settings(state_dir, models=MODELS, **settings)
        self.controller = self.new_controller()

    def memory(self, *used_mib: int) -> None:
        rows = [f"{index}, {used} MiB, 24564 MiB" for index, used in enumerate(used_mib)]
        self.smi_file.write_text("\n".join(rows) + "\n", encoding="utf-8")

    def new_controller(self) -> Controller:
        source = MockSource(paths=[self.smi_file], columns=COLUMNS, clock=self.clock)
        return Controller(self.settings, source, Store(self.settings.state_dir / "gpuwarden.db"), self.host,
                          clock=self.clock)

    def reading(self, *used_mib: int) -> None:
        """The GPUs change, and the next reading (the monitor's) sees it; then the queue's pass."""
        self.memory(*used_mib)
        self.clock.advance(1)
        self.controller.snapshot(Freshness.NOW)
        self.controller.advance_queue()

    def wait(self, name: str, *gpus: int, actor: Actor = ALICE, seconds: int = 3600) -> WaitEntry:
        outcome = self.controller.load_or_wait(name, Selection.gpus(*gpus), actor=actor, wait_seconds=seconds)
        assert isinstance(outcome, WaitEntry), outcome
        return outcome

    def entry(self, entry_id: int) -> WaitEntry:
        return self.controller.queue.entry(entry_id)

    def audit(self, *actions: AuditAction) -> list[AuditEntry]:
        with self.controller.store.read() as tx:
            return [entry for entry in reversed(tx.audit(100)) if entry.action in actions]


def launched(rig: QueueRig) -> list[str]:
    """The models launched, in order."""
    return [process.model_name for process in rig.host.processes.values()]


@pytest.fixture
def rig(tmp_path: Path) -> QueueRig:
    return QueueRig(tmp_path / "state")


def test_a_load_onto_a_free_gpu_does_not_queue(rig: QueueRig) -> None:
    outcome = rig.controller.load_or_wait("alpha", Selection.gpus(0), actor=ALICE, wait_seconds=60)
    assert isinstance(outcome, ModelView) and outcome.state is ModelState.STARTING
    assert rig.controller.queue_lines() == []


def test_a_queued_load_starts_once_its_gpu_is_idle_and_never_while_it_is_busy(rig: QueueRig) -> None:
    rig.reading(BUSY, FREE, FREE)
    entry = rig.wait("alpha", 0)
    [line] = rig.controller.queue_lines()
    assert (line.entry.id, line.position, line.entry.owner) == (entry.id, 1, "alice")
    assert line.held_by[0].startswith("occupied by someone else: 20000 MiB")
    for _ in range(3):  # readings while someone else still holds the GPU
        rig.reading(BUSY, FREE, FREE)
        assert launched(rig) == [] and rig.entry(entry.id).waiting
    rig.reading(FREE, FREE, FREE)  # one reading after the GPU became idle
    assert launched(rig) == ["alpha"]
    view = rig.view("alpha")
    assert (view.state, view.gpu_indexes, view.owner) == (ModelState.STARTING, (0,), "alice")
    started = rig.entry(entry.id)
    assert started.state is WaitState.STARTED and started.detail and started.detail.startswith("placement ")
    joined, loaded = rig.audit(AuditAction.QUEUE, AuditAction.LOAD)
    assert (joined.action, joined.result, joined.user, joined.client) == (AuditAction.QUEUE, AuditResult.OK,
                                                                         "alice", "10.0.0.5")
    assert f"request {entry.id}, position 1, waits up to 1h 00m: refused: GPU 0 is occupied" in (joined.detail or "")
    assert (loaded.action, loaded.result, loaded.user) == (AuditAction.LOAD, AuditResult.OK, "alice")
    assert (loaded.detail or "").startswith(f"request {entry.id} from the queue; launcher PID ")


def test_two_waiters_on_one_gpu_start_in_order(rig: QueueRig) -> None:
    rig.reading(BUSY, FREE, FREE)
    first, second = rig.wait("alpha", 0, actor=ALICE), rig.wait("beta", 0, actor=BOB)
    assert [(line.entry.id, line.position) for line in rig.controller.queue_lines()] == [(first.id, 1), (second.id, 2)]
    rig.reading(FREE, FREE, FREE)
    assert rig.state("alpha") is ModelState.STARTING and rig.entry(second.id).waiting
    [line] = rig.controller.queue_lines()
    assert line.position == 1 and line.held_by[0] == "model alpha loaded by gpuwarden"
    rig.reading(FREE, FREE, FREE)  # GPU 0 holds alpha now: beta keeps waiting
    assert rig.entry(second.id).waiting
    rig.controller.unload("alpha", actor=ALICE)
    rig.reading(FREE, FREE, FREE)
    assert rig.state("beta") is ModelState.STARTING and rig.view("beta").gpu_indexes == (0,)


def test_a_load_waiting_for_two_gpus_is_not_overtaken_on_either(rig: QueueRig) -> None:
    rig.reading(BUSY, BUSY, FREE)
    both = rig.wait("alpha", 0, 1, actor=ALICE)
    later = rig.wait("beta", 1, actor=BOB)
    rig.reading(BUSY, FREE, FREE)  # GPU 1 is free, but alpha is first in line on it
    assert launched(rig) == [] and rig.entry(later.id).waiting
    with pytest.raises(GpusBusy, match="GPU 1 is promised to the queue: alice waits for it"):
        rig.controller.load("gamma", Selection.gpus(1), actor=BOB)  # nor may a load that does not wait take it
    assert rig.controller.load("gamma", None, actor=BOB).gpu_indexes == (2,)  # a default load skips it
    rig.reading(FREE, FREE, FREE)
    assert rig.view("alpha").gpu_indexes == (0, 1) and rig.entry(both.id).state is WaitState.STARTED
    assert rig.entry(later.id).waiting


def test_a_wait_expires_cleanly(rig: QueueRig) -> None:
    rig.reading(BUSY, FREE, FREE)
    entry = rig.wait("alpha", 0, seconds=60)
    rig.clock.advance(58)
    rig.reading(BUSY, FREE, FREE)  # 59 s
    assert rig.entry(entry.id).waiting
    rig.clock.advance(5)
    assert rig.controller.advance_queue() is True
    expired = rig.entry(entry.id)
    assert expired.state is WaitState.EXPIRED and "without its GPUs becoming free" in (expired.detail or "")
    rig.reading(FREE, FREE, FREE)
    assert launched(rig) == [] and rig.controller.queue_lines() == []
    [ended] = rig.audit(AuditAction.QUEUE_END)
    assert ended.user == "alice" and (ended.detail or "").startswith(f"request {entry.id} expired: waited 1m 04s")


def test_a_restart_keeps_the_queue(rig: QueueRig) -> None:
    rig.reading(BUSY, FREE, FREE)
    entry = rig.wait("alpha", 0)
    rig.controller.store.close()
    rig.controller = rig.new_controller()  # gpuwarden restarted
    assert [line.entry.id for line in rig.controller.queue_lines()] == [entry.id]
    rig.reading(FREE, FREE, FREE)
    assert rig.view("alpha").owner == "alice" and rig.entry(entry.id).state is WaitState.STARTED


def test_only_its_owner_or_an_admin_withdraws_a_request(tmp_path: Path) -> None:
    rig = QueueRig(tmp_path / "state", auth=AuthMode.PASSWORD)
    rig.reading(BUSY, FREE, FREE)
    entry = rig.wait("alpha", 0, actor=ALICE)
    with pytest.raises(NotPermitted, match="queued by alice: only they or an admin"):
        rig.controller.withdraw(entry.id, actor=BOB)
    assert rig.entry(entry.id).waiting
    assert rig.controller.withdraw(entry.id, actor=ALICE).state is WaitState.WITHDRAWN
    with pytest.raises(NotWaiting, match="no longer waiting"):
        rig.controller.withdraw(entry.id, actor=BOB)  # ended: that is what bob hears, not "not yours"
    for unknown in (9999, 0, -1, 10**20):
        with pytest.raises(UnknownWaitRequest):
            rig.controller.withdraw(unknown, actor=ADMIN)
    refused, withdrawn = rig.audit(AuditAction.QUEUE_END)
    assert (refused.user, refused.result) == ("bob", AuditResult.REFUSED)
    assert (withdrawn.user, withdrawn.detail) == ("alice", f"request {entry.id} withdrawn: withdrawn by alice")
    rig.reading(FREE, FREE, FREE)
    assert launched(rig) == []


def test_one_waiting_load_per_model_and_only_for_gpus(rig: QueueRig) -> None:
    rig.reading(BUSY, BUSY, FREE)
    first = rig.wait("alpha", 0)
    with pytest.raises(LoadRefused, match=f"already waits for GPU 0 \\(request {first.id}, by alice\\)"):
        rig.wait("alpha", 1, actor=BOB)
    with pytest.raises(BadSelection, match="name the GPUs to wait for"):
        rig.controller.load_or_wait("beta", Selection.cpu(), actor=BOB, wait_seconds=60)
    with pytest.raises(BadSelection, match="does not exist"):
        rig.wait("beta", 7)
    rig.controller.load("gamma", Selection.gpus(2))
    with pytest.raises(LoadRefused, match="already loaded"):
        rig.wait("gamma", 0)
    assert len(rig.controller.queue_lines()) == 1


def test_a_queued_load_whose_model_was_loaded_meanwhile_leaves_the_queue_as_failed(rig: QueueRig) -> None:
    rig.reading(BUSY, FREE, FREE)
    entry = rig.wait("alpha", 0)
    rig.controller.load("alpha", Selection.gpus(1), actor=BOB)
    rig.reading(FREE, FREE, FREE)
    failed = rig.entry(entry.id)
    assert failed.state is WaitState.FAILED and "already loaded" in (failed.detail or "")
    assert launched(rig) == ["alpha"]  # bob's, once


def test_a_queued_start_whose_launch_fails_leaves_the_queue_as_failed(rig: QueueRig) -> None:
    rig.reading(BUSY, FREE, FREE)
    entry = rig.wait("alpha", 0)
    rig.host.launch_error = "no such program: server"
    rig.reading(FREE, FREE, FREE)
    failed = rig.entry(entry.id)
    assert failed.state is WaitState.FAILED and "no such program" in (failed.detail or "")
    assert rig.controller.queue_lines() == [] and not rig.view("alpha").loaded
    rig.host.launch_error = None
    rig.reading(FREE, FREE, FREE)
    assert not rig.view("alpha").loaded  # it is not tried again


def test_queue_changes_are_pushed_to_dashboards(rig: QueueRig) -> None:
    rig.reading(BUSY, FREE, FREE)
    version = rig.controller.changes.version
    entry = rig.wait("alpha", 0)
    assert rig.controller.changes.version > version
    version = rig.controller.changes.version
    rig.controller.withdraw(entry.id, actor=ALICE)
    assert rig.controller.changes.version > version
    version = rig.controller.changes.version
    assert rig.controller.advance_queue() is False and rig.controller.changes.version == version


def test_two_processes_moving_the_queue_start_a_load_once_and_say_so(rig: QueueRig) -> None:
    """The server and a `load --wait` both see the GPU idle; the server starts the load first, while
    the other waits for the database: the other learns the request no longer waits, and fails nothing."""
    rig.reading(BUSY, FREE, FREE)
    entry = rig.wait("alpha", 0)
    rig.memory(FREE, FREE, FREE)
    rig.clock.advance(1)
    server, other = rig.controller, rig.new_controller()
    other.snapshot(Freshness.NOW)
    seen_idle = other.status()

    def server_first() -> Any:
        server.snapshot(Freshness.NOW)
        assert server.advance_queue() is True
        return seen_idle

    assert other.queue.advance(server_first, other._start_queued) is True
    assert rig.entry(entry.id).state is WaitState.STARTED and launched(rig) == ["alpha"]
    assert rig.audit(AuditAction.QUEUE_END) == []


def test_a_waiter_moves_only_its_own_request(rig: QueueRig) -> None:
    """``load --wait`` starts its own request, never someone else's (it would run as its OS account)."""
    rig.reading(BUSY, BUSY, FREE)
    theirs, mine = rig.wait("alpha", 0, actor=BOB), rig.wait("beta", 1)
    rig.reading(BUSY, BUSY, FREE)
    rig.memory(FREE, FREE, FREE)
    rig.clock.advance(1)
    rig.controller.snapshot(Freshness.NOW)
    assert rig.controller.advance_queue(only=mine.id) is True
    assert launched(rig) == ["beta"] and rig.entry(theirs.id).waiting


def test_removing_an_account_withdraws_its_waiting_loads(tmp_path: Path) -> None:
    from gpuwarden.accounts import build_accounts

    rig = QueueRig(tmp_path / "state", auth=AuthMode.PASSWORD)
    accounts = build_accounts(rig.settings, rig.controller.store, rig.clock)
    accounts.add_user(ADMIN, "alice", "correct horse", admin=False)
    rig.reading(BUSY, FREE, FREE)
    entry = rig.wait("alpha", 0, actor=ALICE)
    accounts.remove_user(ADMIN, "alice")
    ended = rig.entry(entry.id)
    assert (ended.state, ended.detail) == (WaitState.WITHDRAWN, "account alice removed")
    rig.reading(FREE, FREE, FREE)
    assert launched(rig) == []


def test_a_request_for_a_gpu_that_is_not_there_fails_once_the_gpus_read_and_frees_its_lines(rig: QueueRig) -> None:
    rig.smi_file.write_text("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.\n",
                            encoding="utf-8")
    rig.clock.advance(1)
    assert rig.controller.snapshot(Freshness.NOW).unreadable
    blind = rig.wait("alpha", 0, 7)  # no good reading yet: which GPUs exist is not known
    behind = rig.wait("beta", 0, actor=BOB)
    rig.memory(BUSY, FREE, FREE)  # the driver is back
    rig.controller.snapshot(Freshness.NEW)  # (a new reading at once: after a failure, NOW waits a few seconds)
    rig.controller.advance_queue()
    failed = rig.entry(blind.id)
    assert (failed.state, failed.detail) == (WaitState.FAILED, "GPU 7 does not exist (GPUs here: 0, 1, 2)")
    assert rig.entry(behind.id).waiting and [line.position for line in rig.controller.queue_lines()] == [1]
    rig.reading(FREE, FREE, FREE)
    assert launched(rig) == ["beta"]
