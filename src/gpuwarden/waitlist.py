"""Pure: the queue of loads waiting for busy GPUs, as plain values and functions.

A load that cannot start because its GPUs are busy may wait in line. Lines are per GPU and first
come, first served: a waiting load starts only when it is first in line on *every* GPU it asked for
and all of them are idle, so a load that waits for two GPUs is never overtaken on either by later
loads that want one. A GPU that someone waits for is promised to them: a load that does not wait
may not take it, even while it is idle (between its becoming idle and the queue's next pass).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

MIN_WAIT_SECONDS = 1
MAX_WAIT_SECONDS = 7 * 24 * 3600  # a week: a request older than that is someone who forgot it


class WaitState(enum.StrEnum):
    """Where a queued load is: waiting, then started, expired, withdrawn or failed (it could not start)."""

    WAITING = "waiting"
    STARTED = "started"
    EXPIRED = "expired"
    WITHDRAWN = "withdrawn"
    FAILED = "failed"


@dataclass(frozen=True)
class WaitEntry:
    """One queued load, as the state database keeps it."""

    id: int
    model_name: str
    gpu_indexes: tuple[int, ...]
    owner: str | None
    client: str | None
    requested_at: datetime
    expires_at: datetime
    state: WaitState = WaitState.WAITING
    ended_at: datetime | None = None
    detail: str | None = None  # how it ended: the placement it started, or why it did not

    @property
    def waiting(self) -> bool:
        return self.state is WaitState.WAITING

    @property
    def gpus_label(self) -> str:
        return ",".join(map(str, self.gpu_indexes))

    def to_dict(self, position: int | None = None, holders: Mapping[int, str] | None = None) -> dict[str, Any]:
        """The API's form; ``position`` and ``holders`` (what holds each GPU now) for waiting entries."""
        return {
            "id": self.id, "model": self.model_name, "gpus": list(self.gpu_indexes), "owner": self.owner,
            "state": self.state.value, "requested_at": self.requested_at.isoformat(),
            "expires_at": self.expires_at.isoformat(), "position": position,
            "ended_at": self.ended_at.isoformat() if self.ended_at else None, "detail": self.detail,
            "held_by": ({str(index): holders[index] for index in self.gpu_indexes if index in holders}
                        if holders is not None else None),
        }


def ahead_of(entry: WaitEntry, waiting: Sequence[WaitEntry]) -> list[WaitEntry]:
    """The waiting loads before ``entry`` in a line it is in (an earlier request for one of its GPUs)."""
    mine = set(entry.gpu_indexes)
    return [other for other in waiting
            if other.waiting and other.id < entry.id and mine.intersection(other.gpu_indexes)]


def position(entry: WaitEntry, waiting: Sequence[WaitEntry]) -> int:
    """1 for the next in line on all its GPUs; N: N - 1 loads are ahead of it."""
    return len(ahead_of(entry, waiting)) + 1


def positions(waiting: Sequence[WaitEntry]) -> dict[int, int]:
    """Each waiting entry's position, by id."""
    return {entry.id: position(entry, waiting) for entry in waiting if entry.waiting}


def claims(waiting: Sequence[WaitEntry], *, before: int | None = None) -> dict[int, WaitEntry]:
    """GPU index -> the first load waiting for it (only loads queued before id ``before``, if given:
    the ones a queued load must let go first)."""
    promised: dict[int, WaitEntry] = {}
    for entry in sorted(waiting, key=lambda item: item.id):
        if entry.waiting and (before is None or entry.id < before):
            for index in entry.gpu_indexes:
                promised.setdefault(index, entry)
    return promised


def claim_text(index: int, entry: WaitEntry) -> str:
    """Why a load may not take a GPU that is promised to the queue."""
    return (f"GPU {index} is promised to the queue: {entry.owner or 'someone'} waits for it"
            f" (model {entry.model_name}, request {entry.id}); wait for it too to join the line")


def expired(waiting: Sequence[WaitEntry], now: datetime) -> list[WaitEntry]:
    return [entry for entry in waiting if entry.waiting and entry.expires_at <= now]


_DURATION = re.compile(r"^(?:(\d{1,6})d)?(?:(\d{1,7})h)?(?:(\d{1,9})m)?(?:(\d{1,10})s?)?$")


def parse_duration_seconds(text: str) -> int:
    """'3600', '90s', '30m', '1h', '1h30m', '2d': whole seconds, within the allowed wait. Untrusted
    text (the CLI, a form): anything else is a ValueError that says what is accepted."""
    cleaned = text.strip().lower().replace(" ", "")
    match = _DURATION.match(cleaned) if cleaned else None
    if match is None or not any(match.groups()):
        raise ValueError(f"cannot read {text[:40]!r} as a duration: use seconds or a form such as 90s, 30m, 1h,"
                         " 1h30m, 2d")
    days, hours, minutes, seconds = (int(part) if part else 0 for part in match.groups())
    total = ((days * 24 + hours) * 60 + minutes) * 60 + seconds
    check_wait_seconds(total)
    return total


def check_wait_seconds(seconds: int) -> None:
    if not MIN_WAIT_SECONDS <= seconds <= MAX_WAIT_SECONDS:
        raise ValueError(f"a wait lasts {MIN_WAIT_SECONDS} s to {MAX_WAIT_SECONDS // 86400} days"
                         f" ({MAX_WAIT_SECONDS} s); got {seconds} s")
