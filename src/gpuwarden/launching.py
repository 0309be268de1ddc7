"""The second half of a load: launching the model whose GPUs were reserved, and recording its
process. A launched model is never left running unrecorded: whatever fails after the launch stops
it again (the first half, the reservation under the machine-wide lock, is in the controller)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from gpuwarden.errors import LaunchFailed, LoadRefused, StateUnavailable
from gpuwarden.launch import LaunchPlan
from gpuwarden.people import Actor, AuditAction, AuditEntry, AuditResult
from gpuwarden.process import Launched, LaunchError, ProcessHost
from gpuwarden.records import ModelState
from gpuwarden.store import Store, StoreError


@dataclass(frozen=True)
class Reservation:
    """A load whose GPUs are reserved (a committed placement without a process yet)."""

    placement_id: int
    plan: LaunchPlan
    log_path: Path
    actor: Actor
    gpu_indexes: tuple[int, ...]
    note: str = ""  # how the load came about, for the audit trail ("request 3 from the queue; ")


def launch_reserved(reservation: Reservation, *, store: Store, processes: ProcessHost,
                    clock: Callable[[], datetime], unload_timeout_seconds: float) -> None:
    """Launch the reserved model and attach its process to the placement (audited as the load)."""
    plan = reservation.plan
    try:
        launched = processes.launch(model_name=plan.model_name, argv=plan.argv, env=plan.env, cwd=plan.cwd,
                                    log_path=reservation.log_path)
    except LaunchError as error:
        # If the database fails here too, reconcile gives the reservation up later.
        with contextlib.suppress(StoreError), store.exclusive() as tx:
            tx.delete_reservation(reservation.placement_id)
        raise LaunchFailed(str(error)) from None

    def stop_again(error: str | None) -> None:
        _stop_launched(launched, reservation, error, store=store, processes=processes, clock=clock,
                       unload_timeout_seconds=unload_timeout_seconds)

    try:
        with store.exclusive() as tx:
            attached = tx.attach_process(reservation.placement_id, pid=launched.pid,
                                         process_start_time=launched.start_time)
            if attached:
                tx.add_audit(AuditEntry.by(reservation.actor, AuditAction.LOAD, AuditResult.OK,
                                           model=plan.model_name, gpus=reservation.gpu_indexes,
                                           detail=f"{reservation.note}launcher PID {launched.pid}"), at=clock())
    except StoreError as error:
        stop_again(f"its process could not be recorded: {error}")
        raise StateUnavailable(f"cannot load {plan.model_name}: {error}; it was stopped again") from None
    if not attached and not _adopted(reservation, launched, store):
        stop_again(None)
        raise LoadRefused(f"model {plan.model_name} was unloaded while it started; it was stopped again")


def _adopted(reservation: Reservation, launched: Launched, store: Store) -> bool:
    """Did supervision find this launch and record it already (a slow loader)?"""
    with contextlib.suppress(StoreError), store.read() as tx:
        return any(p.id == reservation.placement_id and p.pid == launched.pid for p in tx.active_placements())
    return False


def _stop_launched(launched: Launched, reservation: Reservation, error: str | None, *, store: Store,
                   processes: ProcessHost, clock: Callable[[], datetime], unload_timeout_seconds: float) -> None:
    """A model launched for a load that cannot be recorded: stop it, and give the load up."""
    processes.stop(launched.pid, launched.start_time, unload_timeout_seconds, log_path=reservation.log_path)
    if error is not None:
        with contextlib.suppress(StoreError), store.exclusive() as tx:
            tx.finish_placement(reservation.placement_id, state=ModelState.FAILED, ended_at=clock(),
                                exit_code=None, error=error, log_tail=None)
