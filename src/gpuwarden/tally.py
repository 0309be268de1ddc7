"""Counts since gpuwarden started, for ``/metrics``: loads per model, refusals per action. One small
thread-safe counter (the controller's threads and the server's share it); readers get a copy."""

from __future__ import annotations

import threading
from collections import Counter

from gpuwarden.people import AuditEntry, AuditResult


class Tally:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loads: Counter[str] = Counter()
        self._refusals: Counter[str] = Counter()

    def loaded(self, model_name: str) -> None:
        with self._lock:
            self._loads[model_name] += 1

    def audited(self, entry: AuditEntry) -> None:
        """A refused or failed action, as the controller audits it."""
        if entry.result is AuditResult.REFUSED:
            with self._lock:
                self._refusals[entry.action.value] += 1

    def loads(self) -> dict[str, int]:
        with self._lock:
            return dict(self._loads)

    def refusals(self) -> dict[str, int]:
        with self._lock:
            return dict(self._refusals)
