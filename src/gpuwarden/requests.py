"""The model proxy's requests to each model: how many are in flight and when the last one ended. A
model answering a request is at work whatever its GPUs' utilization shows (a slow reader of a stream,
a long poll), so it is never idle then."""

from __future__ import annotations

import threading
from datetime import datetime


class RequestLedger:
    """Thread-safe counts per model name."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._in_flight: dict[str, int] = {}
        self._last: dict[str, datetime] = {}

    def started(self, name: str, at: datetime) -> None:
        with self._lock:
            self._in_flight[name] = self._in_flight.get(name, 0) + 1
            self._last[name] = at

    def ended(self, name: str, at: datetime) -> None:
        with self._lock:
            self._in_flight[name] = max(0, self._in_flight.get(name, 0) - 1)
            self._last[name] = at

    def serving(self, name: str) -> bool:
        """Is a request to the model in flight?"""
        with self._lock:
            return bool(self._in_flight.get(name))

    def last(self, name: str) -> datetime | None:
        """When the model's last request through the proxy started or ended."""
        with self._lock:
            return self._last.get(name)
