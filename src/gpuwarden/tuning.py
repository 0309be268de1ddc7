"""The run-time settings in force (threshold, refresh interval): read from the state database,
changed by admins, swapped in whole under one lock (:class:`gpuwarden.runtime.RuntimeSettings`)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from datetime import datetime

from gpuwarden.config import Settings
from gpuwarden.errors import InvalidSetting, NotPermitted, StateUnavailable
from gpuwarden.parts import StoredPart
from gpuwarden.people import Actor, AuditAction, AuditEntry, AuditResult, may_administer
from gpuwarden.runtime import RuntimeSettings
from gpuwarden.store import Store, StoreError


class Tuning(StoredPart):
    """The one :class:`RuntimeSettings` value in force, and its changes."""

    def __init__(self, settings: Settings, store: Store, clock: Callable[[], datetime],
                 audit: Callable[[AuditEntry], None]) -> None:
        super().__init__(settings, store, clock, audit)
        self._lock = threading.Lock()
        self.current = RuntimeSettings.from_settings(settings)

    def reload(self) -> None:
        """Take the saved settings. Read and swap under the lock, so a value saved meanwhile by
        :meth:`update` is never replaced by an older read."""
        with self._lock:
            try:
                with self.store.read() as tx:
                    saved = tx.settings()
            except StoreError:
                return
            self.current = RuntimeSettings.from_settings(self.settings).updated(saved)

    def update(self, values: Mapping[str, object], actor: Actor) -> RuntimeSettings:
        """Change the threshold / interval now and persist them in the state database (admins only,
        where there are accounts: the threshold decides whose GPU counts as busy)."""
        if not may_administer(actor, self.settings.auth):
            self._audit(AuditEntry.by(actor, AuditAction.SETTINGS, AuditResult.REFUSED, detail="admins only"))
            raise NotPermitted("only an admin can change settings")
        problems = RuntimeSettings.invalid(values)
        if problems:
            raise InvalidSetting("; ".join(problems))
        with self._lock:
            before = self.current.to_dict()
            updated = self.current.updated(values)
            changes = ", ".join(f"{key} {before[key]} -> {value}" for key, value in updated.to_dict().items()
                                if before[key] != value) or "no change"
            try:
                with self.store.exclusive() as tx:
                    tx.save_settings(values)
                    tx.add_audit(AuditEntry.by(actor, AuditAction.SETTINGS, AuditResult.OK, detail=changes),
                                 at=self.clock())
            except StoreError as error:
                raise StateUnavailable(str(error)) from None
            self.current = updated
        return updated
