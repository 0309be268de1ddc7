"""One probe shared by every reader (probe/shared.py): each Freshness, in-flight sharing, change pushes."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

from gpuwarden.probe.shared import Freshness, SharedSource
from gpuwarden.records import GpuReading, Snapshot
from tests.conftest import wait_for

NOW = datetime(2026, 11, 27, tzinfo=UTC)


class CountingSource:
    """A GPU source that counts its probes; ``gate`` holds a probe in flight until the test opens it."""

    description = "counting"

    def __init__(self) -> None:
        self.calls = 0
        self.used_mib = 1
        self.gate = threading.Event()
        self.gate.set()
        self.started = threading.Event()

    def snapshot(self) -> Snapshot:
        self.calls += 1
        self.started.set()
        assert self.gate.wait(10)
        return Snapshot(taken_at=NOW, source="counting", gpus=(GpuReading(0, memory_used_mib=self.used_mib),))


class FakeMonotonic:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_each_freshness_probes_only_when_it_must() -> None:
    source, clock = CountingSource(), FakeMonotonic()
    shared = SharedSource(source, monotonic=clock)
    assert shared.latest is None
    shared.snapshot(Freshness.CACHED)  # nothing cached yet: one probe
    assert source.calls == 1
    clock.now += 3600
    shared.snapshot(Freshness.CACHED)
    assert source.calls == 1  # any age will do
    shared.snapshot(Freshness.within(5))
    assert source.calls == 2  # an hour old: too old
    clock.now += 4
    shared.snapshot(Freshness.within(5))
    assert source.calls == 2  # 4 s old: young enough
    shared.snapshot(Freshness.NOW)
    shared.snapshot(Freshness.NEW)
    assert source.calls == 4 and shared.latest is not None


def run_in_thread(shared: SharedSource, freshness: Freshness) -> threading.Thread:
    thread = threading.Thread(target=shared.snapshot, args=(freshness,))
    thread.start()
    return thread


def test_readers_share_the_probe_in_flight_but_new_waits_for_its_own() -> None:
    source = CountingSource()
    shared = SharedSource(source)
    source.gate.clear()
    first = run_in_thread(shared, Freshness.NOW)
    assert source.started.wait(5)
    sharers = [run_in_thread(shared, Freshness.NOW) for _ in range(10)]
    new = run_in_thread(shared, Freshness.NEW)
    waiting = shared._condition._waiters  # type: ignore[attr-defined]  # CPython's list of waiters
    assert wait_for(lambda: len(waiting) == 11)
    assert source.calls == 1  # everyone waits on the probe in flight
    source.gate.set()
    for thread in (first, *sharers, new):
        thread.join(10)
    assert source.calls == 2  # the ten shared the first probe; NEW had one of its own, started after it asked


def test_on_change_fires_only_when_what_is_shown_changes() -> None:
    source = CountingSource()
    pushes: list[int] = []
    shared = SharedSource(source, on_change=lambda: pushes.append(1))
    shared.snapshot(Freshness.NOW)
    shared.snapshot(Freshness.NOW)
    assert pushes == []  # the first snapshot and an identical one are no news
    source.used_mib = 900
    shared.snapshot(Freshness.NOW)
    assert pushes == [1]


def test_a_failing_probe_is_unreadable_and_releases_the_waiters() -> None:
    class Broken(CountingSource):
        def snapshot(self) -> Snapshot:
            self.calls += 1
            raise RuntimeError("boom")

    source = Broken()
    shared = SharedSource(source, failure_gap_seconds=0)
    for _ in range(2):
        snapshot = shared.snapshot(Freshness.NOW)
        assert snapshot.unreadable and snapshot.gpus == () and "RuntimeError('boom')" in (snapshot.error or "")
    assert source.calls == 2  # not left "in flight": the second call probed again


def test_a_failed_reading_is_shared_for_the_gap_except_before_a_load() -> None:
    class Failing(CountingSource):
        def snapshot(self) -> Snapshot:
            self.calls += 1
            return Snapshot(taken_at=NOW, source="x", error="nvidia-smi did not answer", unreadable=True)

    source, clock = Failing(), FakeMonotonic()
    shared = SharedSource(source, monotonic=clock, failure_gap_seconds=5)
    shared.snapshot(Freshness.NOW)
    clock.now += 4
    assert shared.peek(Freshness.NOW) is not None and shared.snapshot(Freshness.NOW).unreadable
    assert source.calls == 1  # a hung nvidia-smi is not run back to back
    shared.snapshot(Freshness.NEW)
    assert source.calls == 2  # the check before a load always runs
    clock.now += 6
    assert shared.peek(Freshness.NOW) is None and source.calls == 2  # peeking never probes
    shared.snapshot(Freshness.NOW)
    assert source.calls == 3
