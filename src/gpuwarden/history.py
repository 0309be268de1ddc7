"""Pure: the last hour of each GPU's memory and utilization, as the server read them (the dashboard's
sparklines, ``GET /api/gpus/history``, and how long a GPU has been idle).

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

    def idle_seconds(self, index: int, utilization_at_most_percent: int, now: datetime) -> float | None:
        """How long GPU ``index`` has stayed at or below the utilization given, up to ``now`` (None:
        it is not now, or nothing says). Bounded by the window: 'idle an hour' means at least that."""
        readings = [(s.at, s.utilization_percent) for s in self.of(index) if s.utilization_percent is not None]
        if not readings or readings[-1][1] > utilization_at_most_percent:
            return None
        since = readings[-1][0]
        for at, utilization in reversed(readings):
            if utilization > utilization_at_most_percent:
                break
            since = at
        return max(0.0, (now - since).total_seconds())

    def to_dict(self) -> dict[str, Any]:
        return {"window_seconds": WINDOW_SECONDS,
                "gpus": [{"index": index, "samples": [s.to_dict() for s in samples]} for index, samples in self.gpus]}
