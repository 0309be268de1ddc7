"""The body of an unload: claim the model's placements (``stopping``), stop their process trees,
record how they ended. The controller wraps it (audit of refusals, pushes to dashboards)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from gpuwarden import rules
from gpuwarden.config import Settings
from gpuwarden.errors import NotLoaded, NotPermitted, StateUnavailable
from gpuwarden.people import Actor, AuditAction, AuditEntry, AuditResult, may_unload
from gpuwarden.process import ProcessHost
from gpuwarden.records import ModelState, PlacementRecord
from gpuwarden.store import Store, StoreError
from gpuwarden.supervision import Supervision


class Unloader:
    """Stops models and frees their GPUs, on the shared state database."""

    def __init__(self, settings: Settings, store: Store, processes: ProcessHost, supervision: Supervision,
                 clock: Callable[[], datetime]) -> None:
        self.settings = settings
        self.store = store
        self.processes = processes
        self.supervision = supervision
        self.clock = clock

    def begin(self, name: str, actor: Actor) -> list[PlacementRecord]:
        """Mark the model's placements ``stopping``, if ``actor`` may stop them."""
        try:
            with self.store.exclusive() as tx:
                mine = [p for p in tx.active_placements() if p.model_name == name]
                if not mine:
                    rules.configured_model(self.settings, name)
                    raise NotLoaded(f"model {name} is not loaded")
                for record in mine:
                    if not may_unload(actor, record.owner, self.settings.auth):
                        owner = record.owner or "an unknown user (before accounts existed)"
                        raise NotPermitted(f"model {name} was loaded by {owner}: only its owner or an admin"
                                           " can unload it")
                for record in mine:
                    tx.set_state(record.id, ModelState.STOPPING)
        except StoreError as error:
            raise StateUnavailable(f"cannot unload {name}: {error}") from None
        return mine

    def finish(self, name: str, mine: list[PlacementRecord], actor: Actor, reason: str | None) -> None:
        """Stop every placement claimed by :meth:`begin` and record it stopped (audited)."""
        for record in mine:
            self.stop_placement(record)
        try:
            with self.store.exclusive() as tx:
                for record in mine:
                    exit_record = self.processes.exit_record(record.log_file)
                    tx.finish_placement(record.id, state=ModelState.STOPPED, ended_at=self.clock(),
                                        exit_code=exit_record.exit_code if exit_record else None, error=None,
                                        log_tail=self.processes.log_tail(record.log_file))
                    detail = f"{reason + '; ' if reason else ''}owner {record.owner or '-'}"
                    tx.add_audit(AuditEntry.by(actor, AuditAction.UNLOAD, AuditResult.OK, model=name,
                                               gpus=record.gpu_indexes, detail=detail), at=self.clock())
        except StoreError as error:
            raise StateUnavailable(f"model {name} was stopped but its state could not be saved: {error}") from None

    def stop_placement(self, record: PlacementRecord) -> None:
        """Stop all of a placement: its launcher's tree, and what outlived the launcher. A placement
        whose process was never recorded (a load cut off, or still starting) is found by its log path."""
        if record.pid and record.process_start_time:
            launcher: tuple[int, float] | None = (record.pid, record.process_start_time)
        else:
            launcher = self.processes.find_launcher(record.log_file) if record.log_file else None
        if launcher is not None:
            self.processes.stop(*launcher, self.settings.unload_timeout_seconds, log_path=record.log_file)
        self.supervision.stop_leftovers(launcher, record)
