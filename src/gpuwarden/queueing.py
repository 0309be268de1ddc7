"""The queue of loads waiting for busy GPUs, on the shared state database: join, withdraw, expire,
give up. Starting a waiting load is the controller's (the same reservation as any load, inside the
same machine-wide lock); the rules of the lines are pure (:mod:`gpuwarden.waitlist`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from gpuwarden.classify import StatusDocument
from gpuwarden.errors import (
    ControllerError,
    GpusBusy,
    LoadRefused,
    NotPermitted,
    NotWaiting,
    StateUnavailable,
    UnknownWaitRequest,
)
from gpuwarden.parts import StoredPart
from gpuwarden.people import Actor, AuditAction, AuditEntry, AuditResult, Channel, may_unload
from gpuwarden.present import duration_label
from gpuwarden.records import GpuState, Selection
from gpuwarden.rules import absent_gpus
from gpuwarden.store import StoreError
from gpuwarden.waitlist import WaitEntry, WaitState, ahead_of, position


@dataclass(frozen=True)
class QueueLine:
    """A waiting load as people see it: its place in line and what holds each of its GPUs now."""

    entry: WaitEntry
    position: int
    held_by: dict[int, str]

    def to_dict(self) -> dict[str, Any]:
        return self.entry.to_dict(self.position, self.held_by)


def queue_lines(waiting: list[WaitEntry], document: StatusDocument) -> list[QueueLine]:
    """Every waiting load with its position, and what keeps it waiting (from ``document``)."""
    lines = []
    for entry in waiting:
        ahead = ahead_of(entry, waiting)
        held_by = {}
        for index in entry.gpu_indexes:
            gpu = document.gpu(index)
            first = next((other for other in ahead if index in other.gpu_indexes), None)
            if gpu is None:
                held_by[index] = "not seen (unreadable, or no such GPU)"
            elif gpu.state is GpuState.IDLE:
                held_by[index] = f"idle, promised to request {first.id} ahead" if first else "idle"
            else:
                held_by[index] = gpu.reason
        lines.append(QueueLine(entry, len(ahead) + 1, held_by))
    return lines


def line_of(lines: list[QueueLine], entry_id: int) -> QueueLine | None:
    """The line of request ``entry_id`` (None: it no longer waits)."""
    return next((line for line in lines if line.entry.id == entry_id), None)


class LoadQueue(StoredPart):
    """Queued loads: every change is one transaction, audited in it."""

    def waiting(self) -> list[WaitEntry]:
        """Every waiting load, first come first."""
        try:
            with self.store.read() as tx:
                return tx.waiting_entries()
        except StoreError as error:
            raise StateUnavailable(f"cannot read the queue: {error}") from None

    def entry(self, entry_id: int) -> WaitEntry:
        """One queued load, waiting or ended (how it ended is kept for a week)."""
        try:
            with self.store.read() as tx:
                found = tx.wait_entry(entry_id)
        except StoreError as error:
            raise StateUnavailable(f"cannot read the queue: {error}") from None
        if found is None:
            raise UnknownWaitRequest(f"no queued load has id {entry_id}")
        return found

    def join(self, name: str, selection: Selection, actor: Actor, wait_seconds: int, busy: str) -> WaitEntry:
        """Queue a load that was refused because its GPUs are busy (``busy``: why). One waiting load
        per model: a model runs once at a time."""
        now = self.clock()
        try:
            with self.store.exclusive() as tx:
                waiting = tx.waiting_entries()
                already = next((entry for entry in waiting if entry.model_name == name), None)
                if already is not None:
                    raise LoadRefused(f"model {name} already waits for GPU {already.gpus_label}"
                                      f" (request {already.id}, by {already.owner or 'someone'}); withdraw it first")
                entry = tx.add_wait(model_name=name, gpu_indexes=selection.gpu_indexes, owner=actor.name,
                                    client=actor.client or actor.channel.value, requested_at=now,
                                    expires_at=now + timedelta(seconds=wait_seconds))
                place = position(entry, [*waiting, entry])
                tx.add_audit(AuditEntry.by(actor, AuditAction.QUEUE, AuditResult.OK, model=name,
                                           gpus=entry.gpu_indexes,
                                           detail=f"request {entry.id}, position {place}, waits up to"
                                                  f" {duration_label(wait_seconds)}: {busy}"), at=now)
        except StoreError as error:
            raise StateUnavailable(f"cannot queue {name}: {error}") from None
        return entry

    def withdraw(self, entry_id: int, actor: Actor) -> WaitEntry:
        """Take a waiting load out of the queue: its owner or an admin, where there are accounts."""
        entry = self.entry(entry_id)
        if not entry.waiting:
            raise NotWaiting(f"request {entry.id} is no longer waiting ({entry.state.value})")
        if not may_unload(actor, entry.owner, self.settings.auth):
            self._audit(AuditEntry.by(actor, AuditAction.QUEUE_END, AuditResult.REFUSED, model=entry.model_name,
                                      gpus=entry.gpu_indexes,
                                      detail=f"request {entry.id} is {entry.owner or 'an anonymous caller'}'s"))
            raise NotPermitted(f"request {entry.id} was queued by {entry.owner or 'someone'}: only they or an admin"
                               " can withdraw it")
        ended = self.end(entry, WaitState.WITHDRAWN, f"withdrawn by {actor.label}", actor=actor)
        if not ended:
            raise NotWaiting(f"request {entry.id} is no longer waiting ({self.entry(entry_id).state.value})")
        return self.entry(entry_id)

    def expire(self) -> list[WaitEntry]:
        """End every waiting load whose time is up; the ones ended."""
        now = self.clock()
        ended = []
        for entry in self.waiting():
            waited = duration_label((now - entry.requested_at).total_seconds())
            if entry.expires_at <= now and self.end(entry, WaitState.EXPIRED,
                                                    f"waited {waited} without its GPUs becoming free"):
                ended.append(entry)
        return ended

    def advance(self, document: Callable[[], StatusDocument], start: Callable[[WaitEntry], object], *,
                only: int | None = None) -> bool:
        """Start each waiting load (``only`` the one of that id) that is first in line on all its
        GPUs while they look idle in ``document()`` (the latest reading); ``start`` checks them
        again, inside the load's lock, on a new reading. A load that cannot start for another reason
        (its model loaded meanwhile, removed from the configuration) leaves the queue as failed; one
        whose launch failed was ended by ``start``. True if anything changed."""
        waiting = self.waiting()
        changed = False
        for entry in list(waiting):
            if only is not None and entry.id != only:
                continue
            now = document()
            if missing := _missing_gpus(entry, now):  # gone, or never there: it would block its lines
                changed |= self.end(entry, WaitState.FAILED, missing)
                waiting = [other for other in waiting if other.id != entry.id]
                continue
            if ahead_of(entry, waiting) or not _all_idle(entry, now):
                continue
            try:
                start(entry)
            except (GpusBusy, StateUnavailable):
                continue  # busy again, or the database for a moment: it keeps its place
            except NotWaiting:
                pass  # another process started or ended it
            except ControllerError as error:
                self.end(entry, WaitState.FAILED, str(error))  # no-op if its launch failed (ended already)
            changed = True
            waiting = [other for other in waiting if other.id != entry.id]
        return changed

    def end(self, entry: WaitEntry, state: WaitState, detail: str, *, actor: Actor | None = None,
            from_state: WaitState = WaitState.WAITING) -> bool:
        """End ``entry`` (if it is still in ``from_state``), audited; False if it was not."""
        now = self.clock()
        who = actor or owner_actor(entry)
        try:
            with self.store.exclusive() as tx:
                ended = tx.end_wait(entry.id, state, at=now, detail=detail, from_state=from_state)
                if ended:
                    result = AuditResult.FAILED if state is WaitState.FAILED else AuditResult.OK
                    tx.add_audit(AuditEntry.by(who, AuditAction.QUEUE_END, result, model=entry.model_name,
                                               gpus=entry.gpu_indexes, detail=f"request {entry.id} {state.value}:"
                                                                              f" {detail}"), at=now)
        except StoreError as error:
            raise StateUnavailable(f"cannot change the queue: {error}") from None
        return ended


def owner_actor(entry: WaitEntry) -> Actor:
    """Who a queued load acts for when it starts or ends by itself: whoever queued it."""
    return Actor(entry.owner, admin=False, channel=Channel.SYSTEM, client=entry.client)


def _missing_gpus(entry: WaitEntry, document: StatusDocument) -> str | None:
    """Why ``entry`` can never start, if a good reading lacks one of its GPUs."""
    if document.unreadable or document.cpu_mode:
        return None  # no good reading to tell
    return absent_gpus(entry.gpu_indexes, document)


def _all_idle(entry: WaitEntry, document: StatusDocument) -> bool:
    gpus = [document.gpu(index) for index in entry.gpu_indexes]
    return not document.unreadable and all(gpu is not None and gpu.state is GpuState.IDLE for gpu in gpus)
