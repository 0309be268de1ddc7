"""Supervision of running models: one pass looks at every active placement and decides what
became of it (healthy, ended, timed out, a launcher found again, an orphan stopped); the controller
writes the result. The decisions themselves are the pure rules of :mod:`gpuwarden.rules`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from gpuwarden import rules
from gpuwarden.config import ModelConfig, Settings
from gpuwarden.launch import health_url
from gpuwarden.people import Actor, AuditAction, AuditEntry, AuditResult
from gpuwarden.process import ProcessHost
from gpuwarden.records import ModelState, PlacementRecord
from gpuwarden.store import Store

# How long a placement may wait for its process to be recorded before supervision looks for it.
LAUNCH_GRACE_SECONDS = 30.0


@dataclass(frozen=True)
class Observation:
    """What one supervision pass saw: models that became healthy, models that ended, and launchers
    found again for loads whose process was never recorded."""

    promote: tuple[PlacementRecord, ...] = ()
    outcomes: tuple[tuple[PlacementRecord, rules.Outcome], ...] = ()
    adopt: tuple[tuple[PlacementRecord, int, float], ...] = ()


@dataclass
class _Seen:
    """An Observation while one pass collects it."""

    promote: list[PlacementRecord] = field(default_factory=list)
    outcomes: list[tuple[PlacementRecord, rules.Outcome]] = field(default_factory=list)
    adopt: list[tuple[PlacementRecord, int, float]] = field(default_factory=list)


class Supervision:
    """The supervision pass, on the controller's settings, store and process host."""

    def __init__(self, settings: Settings, store: Store, processes: ProcessHost) -> None:
        self.settings = settings
        self.store = store
        self.processes = processes

    def observe(self, active: Sequence[PlacementRecord], now: datetime, at_startup: bool) -> Observation:
        seen = _Seen()
        for record in active:
            if record.pid is None:
                self._observe_reservation(record, now, seen)
            elif not self.processes.alive(record.pid, record.process_start_time):
                seen.outcomes.append((record, self._ended(record, at_startup)))
            elif record.state is ModelState.STOPPING and at_startup:
                # An unload was cut off (gpuwarden killed while stopping the model): finish it.
                self.processes.stop(record.pid, record.process_start_time, self.settings.unload_timeout_seconds,
                                    log_path=record.log_file)
                exit_record = self.processes.exit_record(record.log_file)
                seen.outcomes.append((record, rules.ending(record, exit_record, at_startup=True)))
            elif record.state is ModelState.STARTING:
                self._observe_starting(record, now, seen)
        return Observation(tuple(seen.promote), tuple(seen.outcomes), tuple(seen.adopt))

    def _ended(self, record: PlacementRecord, at_startup: bool) -> rules.Outcome:
        """The launcher is gone. What it started may run on (the launcher was killed, a wrapper's
        child outlived it): stop it all, so no model runs untracked."""
        launcher = (record.pid, record.process_start_time) if record.pid and record.process_start_time else None
        leftovers = self.stop_leftovers(launcher, record)
        exit_record = self.processes.exit_record(record.log_file)
        if leftovers and exit_record is None:
            return rules.orphan_stopped(record, leftovers[0][0])
        return rules.ending(record, exit_record, at_startup=at_startup)

    def stop_leftovers(self, launcher: tuple[int, float] | None, record: PlacementRecord) -> list[tuple[int, float]]:
        """Stop whatever still runs of ``record``'s load besides its launcher; what was stopped."""
        leftovers = self.processes.leftovers(launcher, record.log_file)
        for pid, start_time in leftovers:
            self.processes.stop(pid, start_time, self.settings.unload_timeout_seconds)
        return leftovers

    def _observe_starting(self, record: PlacementRecord, now: datetime, seen: _Seen) -> None:
        spec = self.settings.model(record.model_name)
        elapsed_seconds = (now - record.started_at).total_seconds()
        if spec is None or self._healthy(spec, record, elapsed_seconds):
            seen.promote.append(record)
        elif elapsed_seconds > spec.startup_timeout_seconds and record.pid is not None:
            self.processes.stop(record.pid, record.process_start_time, self.settings.unload_timeout_seconds,
                                log_path=record.log_file)
            seen.outcomes.append((record, rules.health_timeout(spec)))

    def _observe_reservation(self, record: PlacementRecord, now: datetime, seen: _Seen) -> None:
        """A placement with no process recorded: being launched now, or a load cut off between its
        launch and the record (gpuwarden killed). Its launcher is found by its unique log path."""
        if (now - record.started_at).total_seconds() < LAUNCH_GRACE_SECONDS:
            return
        found = self.processes.find_launcher(record.log_file) if record.log_file else None
        if found is None:
            self.stop_leftovers(None, record)  # its model may have outlived the launcher
            seen.outcomes.append((record, rules.interrupted_load()))
        elif record.state is ModelState.STOPPING:
            self.processes.stop(*found, self.settings.unload_timeout_seconds, log_path=record.log_file)
            self.stop_leftovers(found, record)
            seen.outcomes.append((record, (ModelState.STOPPED, None, None)))
        else:
            seen.adopt.append((record, *found))

    def record(self, seen: Observation, now: datetime) -> int:
        """Write what a supervision pass saw; the store's generation afterwards."""
        with self.store.exclusive() as tx:
            for record, pid, start_time in seen.adopt:
                tx.attach_process(record.id, pid=pid, process_start_time=start_time)
            for record in seen.promote:
                tx.mark_running(record.id)
            for record, (state, code, error) in seen.outcomes:
                tx.finish_if_unchanged(record.id, record.pid, state=state, ended_at=now, exit_code=code,
                                       error=error, log_tail=self.processes.log_tail(record.log_file))
                tx.add_audit(ending_entry(record, state, code, error), at=now)
            return tx.generation()

    def _healthy(self, spec: ModelConfig, record: PlacementRecord, elapsed_seconds: float) -> bool:
        url = health_url(spec, record.gpu_indexes, record.port, sys.executable)
        if url is not None:
            return self.processes.healthy(url)
        return elapsed_seconds >= spec.startup_grace_seconds


def ending_entry(record: PlacementRecord, state: ModelState, exit_code: int | None, error: str | None) -> AuditEntry:
    """The audit entry for a model that supervision saw end: a crash, a failed start, or the end of
    an unload that was cut off."""
    system = Actor.system()
    detail = "; ".join(part for part in (error, f"owner {record.owner or '-'}",
                                         None if exit_code is None else f"exit code {exit_code}") if part)
    if record.state is ModelState.STOPPING:
        action, result = AuditAction.UNLOAD, AuditResult.OK
    elif record.state is ModelState.STARTING and state is ModelState.FAILED:
        action, result = AuditAction.FAILURE, AuditResult.FAILED
    else:
        action, result = AuditAction.CRASH, AuditResult.OK if exit_code == 0 else AuditResult.FAILED
    return AuditEntry.by(system, action, result, model=record.model_name, gpus=record.gpu_indexes, detail=detail)
