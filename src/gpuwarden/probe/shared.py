"""One probe shared by every reader: a source that wraps a source.

A room full of dashboards, API clients and CLI calls costs one nvidia-smi run per refresh: a
reader that asks while a probe is in flight waits for that probe instead of starting its own.
What a reader needs is one value, :class:`Freshness`:

- ``Freshness.CACHED``: the latest snapshot, whatever its age (a probe only if there is none);
- ``Freshness.within(s)``: the latest if it is younger than ``s`` seconds, else a probe;
- ``Freshness.NOW``: a probe now, or the one already in flight;
- ``Freshness.NEW``: a probe that starts after this call (the check right before a load).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import ClassVar

from gpuwarden.history import Activity, History
from gpuwarden.probe.assemble import failed_snapshot
from gpuwarden.probe.base import GpuSource, utc_now
from gpuwarden.records import Snapshot


@dataclass(frozen=True)
class Freshness:
    """How fresh a snapshot a reader needs."""

    max_age_seconds: float | None  # a snapshot this young will do; None: any age will do
    started_after_call: bool = False  # only a probe that starts after the call will do

    CACHED: ClassVar[Freshness]
    NOW: ClassVar[Freshness]
    NEW: ClassVar[Freshness]

    @classmethod
    def within(cls, seconds: float) -> Freshness:
        return cls(max_age_seconds=seconds)

    def accepts(self, age_seconds: float) -> bool:
        """Will a snapshot taken ``age_seconds`` ago do?"""
        if self.started_after_call:
            return False
        return self.max_age_seconds is None or age_seconds < self.max_age_seconds


Freshness.CACHED = Freshness(max_age_seconds=None)
Freshness.NOW = Freshness(max_age_seconds=0.0)
Freshness.NEW = Freshness(max_age_seconds=0.0, started_after_call=True)


# After a failed reading, how long readers share it before nvidia-smi is run again.
FAILURE_GAP_SECONDS = 5.0


def signature(snapshot: Snapshot) -> tuple[object, ...]:
    """What a dashboard shows of a snapshot (not its time): a change here is worth a push."""
    return (snapshot.error, snapshot.gpus, snapshot.processes, snapshot.unassigned_processes)


@dataclass(frozen=True)
class ProbeStats:
    """How the probes went since start (``/metrics``): one value, swapped whole after each probe."""

    probes: int = 0
    unreadable: int = 0  # probes that could not read the GPUs
    total_seconds: float = 0.0
    last_seconds: float | None = None

    def after(self, seconds: float, snapshot: Snapshot) -> ProbeStats:
        return ProbeStats(self.probes + 1, self.unreadable + int(snapshot.unreadable),
                          self.total_seconds + seconds, seconds)


class SharedSource:
    """Wraps a :class:`GpuSource`: at most one probe in flight, its snapshot shared by every waiter.

    ``on_change`` is called (outside the lock) when a probe shows something different from the
    snapshot before it, so open dashboards learn of it without waiting for their own poll. An
    unreadable snapshot is given the GPUs of the last good one, so the status can still name them.
    """

    def __init__(self, source: GpuSource, *, on_change: Callable[[], None] = lambda: None,
                 monotonic: Callable[[], float] = time.monotonic,
                 failure_gap_seconds: float = FAILURE_GAP_SECONDS) -> None:
        self._source = source
        self._failure_gap_seconds = failure_gap_seconds
        self._on_change = on_change
        self._monotonic = monotonic
        self._condition = threading.Condition()
        self._in_flight = False
        self._generation = 0  # probes finished so far
        self._latest: Snapshot | None = None
        self._latest_at = 0.0
        self._last_good: Snapshot | None = None
        self._history = History()
        self._activity = Activity()
        self._stats = ProbeStats()

    @property
    def description(self) -> str:
        return self._source.description

    @property
    def latest(self) -> Snapshot | None:
        return self._latest

    @property
    def activity(self) -> Activity:
        """How long each GPU has been idle, at each utilization level (one immutable value)."""
        return self._activity

    @property
    def stats(self) -> ProbeStats:
        return self._stats

    @property
    def history(self) -> History:
        """The last hour of every good reading (one immutable value)."""
        return self._history

    def snapshot(self, freshness: Freshness = Freshness.NOW) -> Snapshot:
        """A snapshot as fresh as ``freshness`` asks, probing only when no shared one will do."""
        with self._condition:
            shared = self._shared_snapshot(freshness)
            if shared is not None:
                return shared
            self._in_flight = True
        return self._probe()

    def peek(self, freshness: Freshness) -> Snapshot | None:
        """The latest snapshot if it will do for ``freshness``, without waiting or probing."""
        with self._condition:
            return self._latest if self._will_do(freshness) else None

    def _will_do(self, freshness: Freshness) -> bool:
        """Under the lock: may this reader have the latest snapshot? After a failed reading (the GPUs
        unreadable) a new probe waits ``failure_gap_seconds``, so a hung nvidia-smi is not run back to
        back; only a reading that must start after the call (before a load) goes at once."""
        if self._latest is None:
            return False
        age = self._monotonic() - self._latest_at
        if freshness.accepts(age):
            return True
        return self._latest.unreadable and not freshness.started_after_call and age < self._failure_gap_seconds

    def _shared_snapshot(self, freshness: Freshness) -> Snapshot | None:
        """Under the lock: a snapshot this reader may share, or None after claiming the next probe."""
        if self._will_do(freshness):
            return self._latest
        if self._in_flight:
            generation = self._generation
            self._condition.wait_for(lambda: self._generation != generation)
            if not freshness.started_after_call and self._latest is not None:
                return self._latest  # the probe in flight when the reader asked will do for it
            self._condition.wait_for(lambda: not self._in_flight)
        return None

    def _probe(self) -> Snapshot:
        snapshot: Snapshot | None = None
        changed = False
        started = self._monotonic()
        try:
            snapshot = self._remembering(self._read())
        finally:
            with self._condition:
                if snapshot is not None:
                    changed = self._latest is not None and signature(self._latest) != signature(snapshot)
                    self._latest = snapshot
                    self._latest_at = self._monotonic()
                    self._keep(snapshot, self._monotonic() - started)
                self._generation += 1
                self._in_flight = False
                self._condition.notify_all()
        if changed:
            self._on_change()
        return snapshot

    def _keep(self, snapshot: Snapshot, seconds: float) -> None:
        """Under the lock: the reading's place in the history and the probe counts. Whatever goes
        wrong here never keeps the lock's waiters from being woken."""
        try:
            self._history = self._history.adding(snapshot)
            self._activity = self._activity.adding(snapshot)
            self._stats = self._stats.after(seconds, snapshot)
        except Exception as error:  # noqa: BLE001 - bookkeeping must not hang every reader
            print(f"gpuwarden: cannot keep the GPU history: {error!r}", flush=True)

    def _read(self) -> Snapshot:
        """The source's snapshot; a source that fails in a way it did not foresee gives an
        unreadable snapshot (fail closed), never an error for every reader."""
        try:
            return self._source.snapshot()
        except Exception as error:  # noqa: BLE001 - any failure of a source means "unreadable"
            return failed_snapshot(utc_now(), self._source.description, f"reading the GPUs failed: {error!r}"[:500])

    def _remembering(self, snapshot: Snapshot) -> Snapshot:
        """Keep a good reading; give an unreadable one the last good reading's GPUs and time."""
        if snapshot.gpus:
            self._last_good = snapshot
        elif snapshot.unreadable and self._last_good is not None:
            snapshot = replace(snapshot, last_good_gpus=self._last_good.gpus, last_good_at=self._last_good.taken_at)
        return snapshot
