"""Pure: the last hour of each GPU's memory and utilization, as the server read them (the dashboard's
sparklines, ``GET /api/gpus/history``), and each GPU's activity (how long it has been idle, however
long that is: idle models are marked and may be unloaded).

One immutable value: each good reading makes a new one (a few hundred samples per GPU), which the
shared source swaps in whole, so readers never see it half changed.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from gpuwarden.records import Snapshot

WINDOW_SECONDS = 3600
MAX_SAMPLES_PER_GPU = 720  # one every 5 s over the hour: more frequent readings are thinned


@dataclass(frozen=True)
class Sample:
    at: datetime
    memory_used_mib: int | None
    utilization_percent: int | None

    def to_dict(self) -> dict[str, Any]:
        return {"at": self.at.strftime("%Y-%m-%dT%H:%M:%SZ"), "memory_used_mib": self.memory_used_mib,
                "utilization_percent": self.utilization_percent}


@dataclass(frozen=True)
class History:
    """Per GPU index, its samples, oldest first, within ``WINDOW_SECONDS`` of the newest reading."""

    gpus: tuple[tuple[int, tuple[Sample, ...]], ...] = ()

    def of(self, index: int) -> tuple[Sample, ...]:
        return next((samples for gpu_index, samples in self.gpus if gpu_index == index), ())

    def adding(self, snapshot: Snapshot) -> History:
        """This history with ``snapshot``'s readings (an unreadable snapshot adds nothing: a gap)."""
        if not snapshot.gpus:
            return self
        cutoff = snapshot.taken_at - timedelta(seconds=WINDOW_SECONDS)
        min_gap = timedelta(seconds=WINDOW_SECONDS / MAX_SAMPLES_PER_GPU)
        updated = []
        for gpu in snapshot.gpus:
            kept = tuple(s for s in self.of(gpu.index) if cutoff < s.at < snapshot.taken_at)
            if len(kept) >= 2 and kept[-1].at - kept[-2].at < min_gap:
                kept = kept[:-1]  # thinned: the last was kept only as the newest; this reading replaces it
            updated.append((gpu.index, (*kept, Sample(snapshot.taken_at, gpu.memory_used_mib,
                                                        gpu.utilization_percent))))
        return History(tuple(sorted(updated)))

    def to_dict(self) -> dict[str, Any]:
        return {"window_seconds": WINDOW_SECONDS,
                "gpus": [{"index": index, "samples": [s.to_dict() for s in samples]} for index, samples in self.gpus]}


PERCENT_LEVELS = 100  # utilization above 0 %, 1 %, ... 99 %


@dataclass(frozen=True)
class Activity:
    """Per GPU index, when its utilization was last above each whole percent (0 to 99), since the server
    began watching it: how long a GPU has been idle, however long that is (the history keeps an hour).

    Fail-safe: a reading whose utilization is unknown (``N/A``) or unreadable counts as busy, so a GPU
    is never called idle on data gpuwarden does not have."""

    gpus: tuple[tuple[int, tuple[datetime, ...]], ...] = ()
    latest_at: datetime | None = None  # the newest reading's time

    def adding(self, snapshot: Snapshot) -> Activity:
        """This activity with ``snapshot``'s readings."""
        now = snapshot.taken_at
        if not snapshot.gpus:  # unreadable: nothing is known, so nothing is idle
            return Activity(tuple((index, (now,) * PERCENT_LEVELS) for index, _ in self.gpus), now)
        updated = []
        for gpu in snapshot.gpus:
            before = self.of(gpu.index) or (now,) * PERCENT_LEVELS  # first seen: watched from now
            utilization = PERCENT_LEVELS if gpu.utilization_percent is None else gpu.utilization_percent
            above = min(max(utilization, 0), PERCENT_LEVELS)
            updated.append((gpu.index, (now,) * above + before[above:]))
        return Activity(tuple(sorted(updated)), now)

    def of(self, index: int) -> tuple[datetime, ...]:
        return next((levels for gpu_index, levels in self.gpus if gpu_index == index), ())

    def idle_since(self, index: int, utilization_at_most_percent: int) -> datetime | None:
        """Since when GPU ``index`` has stayed at or below the utilization given; None if it was above
        it (or unknown) at the newest reading, or was never seen."""
        levels = self.of(index)
        if not levels:
            return None
        since = levels[min(max(utilization_at_most_percent, 0), PERCENT_LEVELS - 1)]
        return since if self.latest_at is None or since < self.latest_at else None
