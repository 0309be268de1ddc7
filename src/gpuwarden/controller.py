"""Use cases: status, load, unload, models, settings, and the supervision of running models.

One source of truth: the state database. The server and the CLI both act through a Controller on
the same database, and every load runs inside one machine-wide exclusive transaction (see
:mod:`gpuwarden.store`), so two loads (two clicks, a click and a CLI call) can never both win.
The rules themselves are pure (:mod:`gpuwarden.rules`); the I/O is behind the GPU source, the
store and the process host, each handed in.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from datetime import datetime

from gpuwarden import rules
from gpuwarden.changes import ChangeSignal
from gpuwarden.classify import StatusDocument, classify
from gpuwarden.config import ModelConfig, Settings
from gpuwarden.desktop import DesktopRule
from gpuwarden.errors import (
    ControllerError,
    GpusBusy,
    NotLoaded,
    NotWaiting,
    StateUnavailable,
)
from gpuwarden.launch import needs_port, plan_launch
from gpuwarden.launching import Reservation, launch_reserved
from gpuwarden.people import Actor, AuditAction, AuditEntry, audit_result
from gpuwarden.probe.base import GpuSource, utc_now
from gpuwarden.probe.shared import FAILURE_GAP_SECONDS, Freshness, SharedSource
from gpuwarden.process import ProcessHost
from gpuwarden.queueing import LoadQueue, QueueLine, owner_actor, queue_lines
from gpuwarden.records import ModelState, ModelView, PlacementRecord, PlacementView, Selection, Snapshot
from gpuwarden.requests import RequestLedger
from gpuwarden.runtime import RuntimeSettings
from gpuwarden.store import STATE_DATABASE, Store, StoreError
from gpuwarden.supervision import Supervision
from gpuwarden.tally import Tally
from gpuwarden.tuning import Tuning
from gpuwarden.unloading import Unloader
from gpuwarden.waitlist import WaitEntry, WaitState, claims

SYSTEM = Actor.system()  # gpuwarden acting on its own (stop_models_on_exit), and tests


class Controller:
    """Status, load, unload. Thread-safe; safe beside other processes using the same state_dir."""

    def __init__(self, settings: Settings, source: GpuSource, store: Store, processes: ProcessHost,
                 clock: Callable[[], datetime] = utc_now) -> None:
        self.settings = settings
        self.gpus = SharedSource(source, on_change=self._changed)
        self.store = store
        self.processes = processes
        self.clock = clock
        self.desktop = DesktopRule.of(settings.desktop_processes, settings.desktop_memory_limit_mib)
        self.tally = Tally()  # counts since start, for /metrics
        self._load_lock = threading.Lock()
        self.changes = ChangeSignal()
        self._requests = RequestLedger()  # what the model proxy sends the models: their activity
        self._running_seen: dict[int, datetime] = {}  # placement id -> when this process first saw it running
        self._store_generation = -1
        self._supervision = Supervision(settings, store, processes)
        self._unloader = Unloader(settings, store, processes, self._supervision, clock)
        self.queue = LoadQueue(settings, store, clock, self.audit)
        self._tuning = Tuning(settings, store, clock, self.audit)
        self._tuning.reload()

    def _changed(self) -> None:
        """Something users see changed: the web layer pushes it to every dashboard."""
        self.changes.bump()

    # ----------------------------------------------------------------- runtime settings

    @property
    def runtime(self) -> RuntimeSettings:
        """The threshold and refresh interval in force now (one immutable value)."""
        return self._tuning.current

    def update_settings(self, values: Mapping[str, object], actor: Actor = SYSTEM) -> RuntimeSettings:
        """Change the threshold / interval now and persist them (admins only, where there are accounts)."""
        updated = self._tuning.update(values, actor)
        self._changed()
        return updated

    def audit(self, entry: AuditEntry) -> None:
        """Record what was refused or failed (its action wrote nothing); never fails the caller."""
        self.tally.audited(entry)
        self.store.record_audit(entry, self.clock())

    # ----------------------------------------------------------------- status

    def snapshot(self, freshness: Freshness = Freshness.CACHED) -> Snapshot:
        return self.gpus.snapshot(freshness)

    def placement_views(self, records: Sequence[PlacementRecord]) -> list[PlacementView]:
        """Where gpuwarden placed models, with each model's own PIDs (its process tree) now."""
        return [PlacementView(model_name=r.model_name, gpu_indexes=r.gpu_indexes, own_pids=self._own_pids(r))
                for r in records]

    def _own_pids(self, record: PlacementRecord) -> frozenset[int]:
        """The launcher's tree, and the model's own tree (which outlives a killed launcher)."""
        launcher = (self.processes.tree(record.pid, record.process_start_time, log_path=record.log_file)
                    if record.pid else frozenset())
        model = self.processes.model_process(record.log_file)
        return launcher | (self.processes.tree(*model) if model is not None else frozenset())

    def status(self, freshness: Freshness = Freshness.CACHED, *, threshold_mib: int | None = None) -> StatusDocument:
        """The status document; ``threshold_mib`` classifies with another threshold, this call only."""
        return self.status_of(self.snapshot(freshness), threshold_mib=threshold_mib)

    def status_of(self, snapshot: Snapshot, *, threshold_mib: int | None = None) -> StatusDocument:
        """The status document for a snapshot already taken (the web layer awaits it without a thread)."""
        threshold = self.runtime.memory_threshold_mib if threshold_mib is None else threshold_mib
        try:
            with self.store.read() as tx:
                records = tx.active_placements()
        except StoreError as error:
            document = classify(snapshot, threshold, (), self.desktop)
            return replace(document, warnings=(*document.warnings, f"model placements unknown: {error}"),
                           placements_known=False)
        return classify(snapshot, threshold, self.placement_views(records), self.desktop)

    # ----------------------------------------------------------------- models

    def models(self) -> list[ModelView]:
        try:
            with self.store.read() as tx:
                latest = tx.latest_placements()
        except StoreError as error:
            raise StateUnavailable(str(error)) from None
        now, activity = self.clock(), self.gpus.activity
        return [rules.model_view(spec, record, now, self._model_pid(record),
                                 None if self._requests.serving(spec.name) else rules.idle_since(
                                     spec, record, activity, self._running_since(record, now),
                                     self._requests.last(spec.name)))
                for spec, record in ((spec, latest.get(spec.name)) for spec in self.settings.models)]

    def model_view(self, name: str) -> ModelView | None:
        """The view of one configured model (None: not configured)."""
        return next((view for view in self.models() if view.name == name), None)

    def _running_since(self, record: PlacementRecord | None, now: datetime) -> datetime | None:
        """When this process first saw the placement running (its start-up, loading weights at 0 %
        utilization, is never idle time; after a restart, the count starts anew)."""
        if record is None or record.state is not ModelState.RUNNING:
            return None
        return self._running_seen.setdefault(record.id, now)

    @property
    def requests(self) -> RequestLedger:
        """The model proxy's requests to each model, in flight and last ended (a model's activity)."""
        return self._requests

    def _model_pid(self, record: PlacementRecord | None) -> int | None:
        if record is None or not record.active:
            return None
        model = self.processes.model_process(record.log_file)
        return model[0] if model is not None else None

    def model_spec(self, name: str) -> ModelConfig:
        return rules.configured_model(self.settings, name)

    # ----------------------------------------------------------------- load / unload

    def load(self, name: str, selection: Selection | None = None, *, actor: Actor = SYSTEM) -> ModelView:
        """Reserve first, launch second: under the machine-wide lock a new probe, the default GPUs
        if none were selected, refusal of unsafe GPUs (and of GPUs promised to the queue), and a
        committed reservation of the GPUs; then the launch, and the process recorded. A launched
        model is never left running unrecorded: whatever fails after the launch stops it again. The
        model belongs to ``actor``; refusals and failures are audited like the load itself."""
        try:
            return self._load(name, selection, actor)
        except ControllerError as error:
            self._audit_load(name, selection, actor, error)
            raise

    def load_or_wait(self, name: str, selection: Selection | None, *, actor: Actor = SYSTEM,
                     wait_seconds: int) -> ModelView | WaitEntry:
        """Load now if the GPUs are free; if they are busy, join the queue for them (for up to
        ``wait_seconds``): the load then starts by itself once they are (:meth:`advance_queue`)."""
        try:
            rules.check_wait(selection, self.status())
            return self._load(name, selection, actor)
        except GpusBusy as busy:
            refusal = str(busy)
        except ControllerError as error:
            self._audit_load(name, selection, actor, error)
            raise
        try:
            assert selection is not None  # check_wait
            entry = self.queue.join(name, selection, actor, wait_seconds, refusal)
        except ControllerError as error:
            self._audit_load(name, selection, actor, error)
            raise
        self._changed()
        return entry

    def _audit_load(self, name: str, selection: Selection | None, actor: Actor, error: ControllerError) -> None:
        self.audit(AuditEntry.by(actor, AuditAction.LOAD, audit_result(error), model=name[:64],
                                 gpus=selection.gpu_indexes if selection else None, detail=str(error)))

    def _load(self, name: str, selection: Selection | None, actor: Actor, ticket: WaitEntry | None = None) -> ModelView:
        spec = self.model_spec(name)
        self.reconcile()
        reservation = self._reserve(spec, selection, actor, ticket)
        try:
            self._launch(reservation)
        except ControllerError as error:
            if ticket is not None:  # started from the queue, and failed: it leaves the queue as failed
                self._audit_load(name, selection, actor, error)
                with contextlib.suppress(ControllerError):
                    self.queue.end(ticket, WaitState.FAILED, str(error), from_state=WaitState.STARTED)
            raise
        finally:  # loaded; or the reservation given up, the model marked failed: dashboards show it
            self._changed()
        self.tally.loaded(name)
        view = self.model_view(name)
        assert view is not None
        return view

    def _reserve(self, spec: ModelConfig, selection: Selection | None, actor: Actor,
                 ticket: WaitEntry | None = None) -> Reservation:
        """The GPUs reserved for a load (``ticket``: the queued load it starts, if any)."""
        self._refuse_while_unreadable(spec, selection)
        with self._load_lock:
            try:
                with self.store.exclusive() as tx:
                    waiting = tx.waiting_entries()
                    if ticket is not None and all(entry.id != ticket.id for entry in waiting):
                        raise NotWaiting(f"request {ticket.id} is no longer waiting")  # another process started it
                    active = tx.active_placements()
                    rules.refuse_if_already_loaded(spec.name, active)
                    promised = claims(waiting, before=ticket.id if ticket else None)
                    document = classify(self.snapshot(Freshness.NEW), self.runtime.memory_threshold_mib,
                                        self.placement_views(active), self.desktop)
                    chosen = selection or rules.default_selection(spec, document, promised)
                    uuids = rules.check_selection(chosen, document, promised)
                    port = self.processes.free_port() if needs_port(spec) else None
                    plan = plan_launch(spec, chosen.gpu_indexes, port=port, base_env=os.environ,
                                       default_cwd=self.settings.state_dir, python=sys.executable)
                    log_path = self.processes.new_log_path(spec.name)
                    placement_id = tx.insert_placement(
                        model_name=spec.name, gpu_indexes=chosen.gpu_indexes, gpu_uuids=uuids, pid=None,
                        process_start_time=None, port=port, started_at=self.clock(), owner=actor.name,
                        log_path=str(log_path))
                    if ticket is not None:
                        tx.end_wait(ticket.id, WaitState.STARTED, at=self.clock(), detail=f"placement {placement_id}")
            except StoreError as error:
                raise StateUnavailable(f"cannot load {spec.name}: {error}") from None
        note = f"request {ticket.id} from the queue; " if ticket is not None else ""
        return Reservation(placement_id, plan, log_path, actor, chosen.gpu_indexes, note)

    def _refuse_while_unreadable(self, spec: ModelConfig, selection: Selection | None) -> None:
        """A GPU load while the latest reading failed moments ago is refused at once, without
        waiting on a hung nvidia-smi inside the machine-wide lock (the check inside it stays)."""
        latest = self.gpus.peek(Freshness.within(FAILURE_GAP_SECONDS))
        wants_gpus = (selection is not None and not selection.on_cpu) or (selection is None and spec.default_gpus > 0)
        if latest is not None and latest.unreadable and wants_gpus:
            document = self.status_of(latest)
            if selection is None:
                rules.default_selection(spec, document)  # raises the refusal a default load gets
            rules.check_selection(selection or Selection.cpu(), document)

    def _launch(self, reservation: Reservation) -> None:
        launch_reserved(reservation, store=self.store, processes=self.processes, clock=self.clock,
                        unload_timeout_seconds=self.settings.unload_timeout_seconds)

    # ----------------------------------------------------------------- the queue

    def advance_queue(self, *, only: int | None = None) -> bool:
        """Expire what waited too long, and start each queued load whose GPUs are free and whose
        turn it is (the server's monitor calls this after each reading; ``load --wait`` for its own
        request, ``only``). True if the queue changed."""
        changed = bool(self.queue.expire())
        changed = self.queue.advance(self.status, self._start_queued, only=only) or changed
        if changed:
            self._changed()
        return changed

    def _start_queued(self, entry: WaitEntry) -> None:
        self._load(entry.model_name, Selection(entry.gpu_indexes), owner_actor(entry), entry)

    def queue_lines(self, document: StatusDocument | None = None) -> list[QueueLine]:
        """Every waiting load, its place in line and what holds its GPUs (in ``document``; default:
        the latest reading)."""
        return queue_lines(self.queue.waiting(), document or self.status())

    def withdraw(self, entry_id: int, *, actor: Actor = SYSTEM) -> WaitEntry:
        """Take a load out of the queue (its owner or an admin)."""
        entry = self.queue.withdraw(entry_id, actor)
        self._changed()
        return entry

    # ----------------------------------------------------------------- unload

    def unload_idle(self) -> list[str]:
        """Unload every model whose ``idle_unload_minutes`` passed with its GPUs idle (the server's
        monitor calls this); the audit trail says why. The names unloaded."""
        unloaded: list[str] = []
        if not any(spec.idle_unload_minutes for spec in self.settings.models):
            return unloaded
        for name in [view.name for view in self.models() if view.idle_since is not None]:
            # decided anew for each: an unload before it took seconds, and a request may have come
            view = self.model_view(name)
            spec, reading = self.settings.model(name), self.gpus.latest
            # idle up to the newest reading, not the clock: after a stall (a machine asleep) the GPUs
            # are read again before anything is called idle
            reason = (rules.idle_reason(spec, view, reading.taken_at)
                      if spec is not None and view is not None and reading is not None else None)
            if reason is not None:
                with contextlib.suppress(NotLoaded):  # someone unloaded it meanwhile
                    self.unload(name, reason=reason)
                    unloaded.append(name)
        return unloaded

    def unload(self, name: str, *, actor: Actor = SYSTEM, reason: str | None = None) -> ModelView:
        """Stop the model's whole process tree (graceful, then forced) and free its GPUs. Only its
        owner or an admin may, where there are accounts. A model removed from the configuration
        while it ran can still be unloaded. ``reason``: why gpuwarden unloads it itself (audited)."""
        try:
            mine = self._unloader.begin(name, actor)
        except ControllerError as error:
            self.audit(AuditEntry.by(actor, AuditAction.UNLOAD, audit_result(error), model=name[:64],
                                     detail=str(error)))
            raise
        self._changed()
        self._unloader.finish(name, mine, actor, reason)
        self.snapshot(Freshness.NOW)
        self._changed()
        return self.model_view(name) or rules.unconfigured_view(mine[-1])

    def stop_all(self) -> None:
        """Unload every loaded model (used when stop_models_on_exit is set)."""
        for view in self.models():
            if view.loaded:
                with contextlib.suppress(ControllerError):
                    self.unload(view.name)

    # ----------------------------------------------------------------- supervision

    def reconcile(self, *, at_startup: bool = False) -> bool:
        """Notice models that ended, passed their health check, or timed out, and settings another
        process saved. True if anything changed.

        At start-up this re-adopts placements whose process still runs (same PID *and* start time)
        and marks the rest stopped.
        """
        self.processes.reap()
        try:
            with self.store.read() as tx:
                active = tx.active_placements()
                generation = tx.generation()
        except StoreError:
            return False
        now = self.clock()
        seen = self._supervision.observe(active, now, at_startup)
        changed = bool(seen.outcomes or seen.promote or seen.adopt)
        if changed:
            try:
                generation = self._supervision.record(seen, now)
            except StoreError:
                return False
        if generation != self._store_generation:
            # Another process's change (the CLI): announced, and its settings taken. This process's
            # own changes were announced when they were made.
            if self._store_generation == -1 or self.store.changed_by_others(self._store_generation, generation):
                changed = changed or self._store_generation != -1
                self._tuning.reload()
            self._store_generation = generation
        if changed:
            self._changed()
        return changed

def build_controller(settings: Settings, source: GpuSource | None = None) -> Controller:
    """The factory every entry point uses: source from settings, store and logs under state_dir."""
    from gpuwarden.probe.sources import make_source
    from gpuwarden.process.host import LocalProcessHost

    return Controller(
        settings=settings,
        source=source or make_source(settings),
        store=Store(settings.state_dir / STATE_DATABASE),
        processes=LocalProcessHost(settings.state_dir / "logs"),
    )
