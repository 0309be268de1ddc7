"""The server's monitor thread (web/app.py Monitor): start-up reconcile, periodic GPU refresh at the
run-time interval, and surviving a failing pass."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from gpuwarden.controller import Controller
from gpuwarden.probe.shared import Freshness
from gpuwarden.process.fake import FakeProcessHost
from gpuwarden.records import GpuReading, Snapshot
from gpuwarden.store import Store
from gpuwarden.web.app import Monitor
from tests.conftest import make_settings, wait_for

NOW = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)


class CountingSource:
    """A GPU source that counts its probes."""

    description = "counting"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.calls = 0
        self.times: list[float] = []  # time.monotonic() of each probe

    def snapshot(self) -> Snapshot:
        with self._lock:
            self.calls += 1
            self.times.append(time.monotonic())
        return Snapshot(taken_at=NOW, source="counting", gpus=(GpuReading(0, memory_used_mib=1),))


def build(tmp_path: Path, kind: type[Controller] = Controller) -> tuple[Controller, CountingSource]:
    source = CountingSource()
    settings = make_settings(tmp_path / "state")
    controller = kind(settings, source, Store(tmp_path / "state" / "gpuwarden.db"), FakeProcessHost(tmp_path / "logs"))
    return controller, source


def test_gpus_are_refreshed_at_the_runtime_interval(tmp_path: Path) -> None:
    controller, source = build(tmp_path)
    controller.update_settings({"refresh_interval_seconds": 1})
    assert controller.runtime.refresh_interval_seconds == 1
    monitor = Monitor(controller, interval_seconds=0.05)
    monitor.start()
    try:
        assert source.calls == 1  # the start-up probe
        assert wait_for(lambda: source.calls >= 4, timeout=30)  # three refreshes, however slow the machine
    finally:
        monitor.stop()
    gaps = [later - earlier for earlier, later in zip(source.times, source.times[1:], strict=False)]
    # Never more often than the interval, though the monitor passes every 0.05 s (a lower bound is
    # what a loaded machine cannot break; the upper bound is wait_for's timeout).
    assert min(gaps) >= 0.95, gaps


def test_default_interval_does_not_refresh_within_seconds(tmp_path: Path) -> None:
    controller, source = build(tmp_path)
    assert controller.runtime.refresh_interval_seconds == 300
    monitor = Monitor(controller, interval_seconds=0.02)
    monitor.start()
    try:
        assert wait_for(lambda: controller.processes.reaps >= 10)  # type: ignore[attr-defined]  # many passes
    finally:
        monitor.stop()
    assert source.calls == 1


class FlakyController(Controller):
    """reconcile raises on its first two calls after start-up, then works and counts."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.failures = 0
        self.successes = 0

    def reconcile(self, *, at_startup: bool = False) -> bool:
        if not at_startup and self.failures < 2:
            self.failures += 1
            raise RuntimeError(f"store hiccup {self.failures}")
        result = super().reconcile(at_startup=at_startup)
        if not at_startup:
            self.successes += 1
        return result


def test_a_failing_pass_is_reported_and_the_monitor_goes_on(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    controller, _ = build(tmp_path, FlakyController)
    assert isinstance(controller, FlakyController)
    monitor = Monitor(controller, interval_seconds=0.02)
    monitor.start()
    try:
        assert wait_for(lambda: controller.successes >= 3)
    finally:
        monitor.stop()
    assert controller.failures == 2
    out = capsys.readouterr().out
    assert out.count("gpuwarden: monitor:") == 2
    assert "RuntimeError('store hiccup 1')" in out and "RuntimeError('store hiccup 2')" in out


class RecordingController(Controller):
    """Records the order of the calls the monitor makes, and how many probes preceded each."""

    def __init__(self, settings: Any, source: CountingSource, *args: Any, **kwargs: Any) -> None:
        super().__init__(settings, source, *args, **kwargs)
        self.source = source
        self.calls: list[tuple[str, object, int]] = []

    def reconcile(self, *, at_startup: bool = False) -> bool:
        self.calls.append(("reconcile", at_startup, self.source.calls))
        return super().reconcile(at_startup=at_startup)

    def snapshot(self, freshness: Freshness = Freshness.CACHED) -> Snapshot:
        self.calls.append(("snapshot", freshness, self.source.calls))
        return super().snapshot(freshness)

    def unload_idle(self) -> list[str]:
        self.calls.append(("unload_idle", None, self.source.calls))
        return super().unload_idle()


def test_start_reconciles_at_startup_first_then_probes_once(tmp_path: Path) -> None:
    controller, source = build(tmp_path, RecordingController)
    assert isinstance(controller, RecordingController)
    monitor = Monitor(controller, interval_seconds=60)  # the thread's first pass is a minute away
    monitor.start()
    try:
        assert controller.calls == [("reconcile", True, 0), ("snapshot", Freshness.NOW, 0)]
        assert source.calls == 1
    finally:
        monitor.stop()
    assert controller.calls == [("reconcile", True, 0), ("snapshot", Freshness.NOW, 0)]  # stop ran no pass


def test_each_pass_gives_idle_models_back_after_supervision(tmp_path: Path) -> None:
    controller, _ = build(tmp_path, RecordingController)
    assert isinstance(controller, RecordingController)
    monitor = Monitor(controller, interval_seconds=0.02)
    monitor.start()
    try:
        assert wait_for(lambda: any(name == "unload_idle" for name, _, _ in controller.calls), timeout=30)
    finally:
        monitor.stop()
    names = [name for name, _, _ in controller.calls]
    first = names.index("unload_idle")
    assert "reconcile" in names[1:first]  # the pass's supervision (and reading) came first: states are current
    assert names[first - 1] in ("reconcile", "snapshot")
