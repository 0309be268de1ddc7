"""What a part of the controller that works on the state database is built on: the settings, the
store, the clock, and the audit trail (where its refusals go)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from gpuwarden.config import Settings
from gpuwarden.people import AuditEntry
from gpuwarden.store import Store


class StoredPart:
    """The base of :class:`gpuwarden.queueing.LoadQueue` and :class:`gpuwarden.tuning.Tuning`."""

    def __init__(self, settings: Settings, store: Store, clock: Callable[[], datetime],
                 audit: Callable[[AuditEntry], None]) -> None:
        self.settings = settings
        self.store = store
        self.clock = clock
        self._audit = audit
