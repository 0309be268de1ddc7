"""The one interface every GPU source implements, and the clock they stamp snapshots with."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Protocol

from gpuwarden.records import Snapshot


class GpuSource(Protocol):
    """Anything that can take a snapshot of this machine's GPUs. Never raises for GPU trouble:
    a failing driver is a snapshot with ``error`` set."""

    @property
    def description(self) -> str: ...

    def snapshot(self) -> Snapshot: ...


def utc_now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)
