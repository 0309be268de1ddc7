"""Use cases: status, load, unload, models, settings. The one place where the rules are applied.

One source of truth: the state database. The server and the CLI both act through a Controller on
the same database, and every load runs inside one machine-wide exclusive transaction (see
:mod:`gpuwarden.store`), so two loads (two clicks, a click and a CLI call) can never both win.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime

from gpuwarden.classify import StatusDocument, classify
from gpuwarden.config import ModelConfig, Settings, runtime_setting_in_range
from gpuwarden.errors import (
    BadSelection,
    ControllerError,
    LaunchFailed,
    LoadRefused,
    NotLoaded,
    StateUnavailable,
    UnknownModel,
)
from gpuwarden.launch import health_url, needs_port, plan_launch
from gpuwarden.probe import GpuSource, utc_now
from gpuwarden.process import Launched, LaunchError, ProcessHost
from gpuwarden.records import GpuState, ModelState, ModelView, PlacementView, Selection, Snapshot
from gpuwarden.store import PlacementRecord, Store, StoreError

# What reconcile decided for a placement whose process ended: new state, exit code, error.
Outcome = tuple[PlacementRecord, ModelState, int | None, str | None]


class Controller:
    """Status, load, unload. Thread-safe; safe beside other processes using the same state_dir."""

    def __init__(self, settings: Settings, source: GpuSource, store: Store, processes: ProcessHost,
                 clock: Callable[[], datetime] = utc_now) -> None:
        self.settings = settings
        self.source = source
        self.store = store
        self.processes = processes
        self.clock = clock
        self.memory_threshold_mib = settings.memory_threshold_mib
        self.refresh_interval_seconds = settings.refresh_interval_seconds
        self._load_lock = threading.Lock()
        self._probe = threading.Condition()
        self._probe_in_flight = False
        self._probe_generation = 0
        self._latest: Snapshot | None = None
        self._latest_monotonic = 0.0
        self._changes = threading.Lock()
        self.version = 0
        self._store_generation = -1
        self._load_runtime_settings()

    # ----------------------------------------------------------------- notifications

    def _changed(self) -> None:
        """Something users see changed: the web layer pushes ``version`` to every dashboard."""
        with self._changes:
            self.version += 1

    # ----------------------------------------------------------------- settings

    def _load_runtime_settings(self) -> None:
        try:
            with self.store.read() as tx:
                saved = tx.settings()
        except StoreError:
            return
        threshold = saved.get("memory_threshold_mib")
        interval = saved.get("refresh_interval_seconds")
        if runtime_setting_in_range(threshold, "memory_threshold_mib"):
            self.memory_threshold_mib = threshold
        if runtime_setting_in_range(interval, "refresh_interval_seconds"):
            self.refresh_interval_seconds = interval

    def runtime_settings(self) -> dict[str, int]:
        return {"memory_threshold_mib": self.memory_threshold_mib,
                "refresh_interval_seconds": self.refresh_interval_seconds}

    def update_settings(self, values: dict[str, int]) -> dict[str, int]:
        """Change the threshold / interval now and persist them in the state database."""
        try:
            with self.store.exclusive() as tx:
                tx.save_settings(values)
        except StoreError as error:
            raise StateUnavailable(str(error)) from None
        self.memory_threshold_mib = values.get("memory_threshold_mib", self.memory_threshold_mib)
        self.refresh_interval_seconds = values.get("refresh_interval_seconds", self.refresh_interval_seconds)
        self._changed()
        return self.runtime_settings()

    # ----------------------------------------------------------------- status

    def snapshot(self, *, refresh: bool = False, fresh: bool = False, max_age_seconds: float = 0.0) -> Snapshot:
        """The latest snapshot. ``refresh``: probe now, sharing a probe already in flight, unless the
        latest is younger than ``max_age_seconds`` (dashboards polling a moment apart share it).
        ``fresh``: probe now with a run that starts after this call (the pre-load check)."""
        with self._probe:
            age = time.monotonic() - self._latest_monotonic
            if self._latest is not None and not fresh and (not refresh or age < max_age_seconds):
                return self._latest
            if self._probe_in_flight:
                generation = self._probe_generation
                self._probe.wait_for(lambda: self._probe_generation != generation)
                if not fresh and self._latest is not None:
                    return self._latest
                self._probe.wait_for(lambda: not self._probe_in_flight)
            self._probe_in_flight = True
        snapshot: Snapshot | None = None
        changed = False
        try:
            snapshot = self.source.snapshot()
        finally:
            with self._probe:
                if snapshot is not None:
                    changed = self._latest is not None and _signature(self._latest) != _signature(snapshot)
                    self._latest = snapshot
                    self._latest_monotonic = time.monotonic()
                self._probe_generation += 1
                self._probe_in_flight = False
                self._probe.notify_all()
        if changed:
            self._changed()  # other dashboards learn of it without waiting for their own poll
        return snapshot

    def placement_views(self, records: Sequence[PlacementRecord] | None = None) -> list[PlacementView]:
        """Where gpuwarden placed models, with each model's own PIDs (its process tree) now."""
        if records is None:
            with self.store.read() as tx:
                records = tx.active_placements()
        return [
            PlacementView(model_name=r.model_name, gpu_indexes=r.gpu_indexes,
                          own_pids=self.processes.tree(r.pid, r.process_start_time) if r.pid else frozenset())
            for r in records
        ]

    def status(self, *, refresh: bool = False, max_age_seconds: float = 0.0) -> StatusDocument:
        snapshot = self.snapshot(refresh=refresh, max_age_seconds=max_age_seconds)
        try:
            with self.store.read() as tx:
                records = tx.active_placements()
        except StoreError as error:
            document = classify(snapshot, self.memory_threshold_mib, ())
            return replace(document, warnings=(*document.warnings, f"model placements unknown: {error}"))
        return classify(snapshot, self.memory_threshold_mib, self.placement_views(records))

    # ----------------------------------------------------------------- models

    def models(self) -> list[ModelView]:
        try:
            with self.store.read() as tx:
                latest = tx.latest_placements()
        except StoreError as error:
            raise StateUnavailable(str(error)) from None
        now = self.clock()
        views = []
        for spec in self.settings.models:
            record = latest.get(spec.name)
            if record is None:
                views.append(ModelView.not_loaded(spec.name, spec.description, spec.default_gpus))
                continue
            uptime = (now - record.started_at).total_seconds() if record.active else None
            views.append(ModelView(
                name=spec.name, description=spec.description, default_gpus=spec.default_gpus, state=record.state,
                gpu_indexes=record.gpu_indexes, pid=record.pid, port=record.port, started_at=record.started_at,
                ended_at=record.ended_at, requested_by=record.requested_by, exit_code=record.exit_code,
                error=record.error, log_tail=record.log_tail if not record.active else None,
                log_path=record.log_path, uptime_seconds=uptime))
        return views

    def model_spec(self, name: str) -> ModelConfig:
        spec = self.settings.model(name)
        if spec is None:
            known = ", ".join(m.name for m in self.settings.models) or "none configured"
            raise UnknownModel(f"unknown model {name[:80]!r} (known: {known})")
        return spec

    # ----------------------------------------------------------------- load / unload

    def load(self, name: str, selection: Selection | None = None, requested_by: str | None = None) -> ModelView:
        """Under the machine-wide lock: fresh probe, choose the default GPUs if none were selected,
        refuse unsafe GPUs, start, record."""
        spec = self.model_spec(name)
        self.reconcile()
        with self._load_lock:
            try:
                with self.store.exclusive() as tx:
                    active = tx.active_placements()
                    mine = [p for p in active if p.model_name == name]
                    if mine:
                        where = ", ".join(map(str, mine[0].gpu_indexes)) or "CPU"
                        raise LoadRefused(f"model {name} is already loaded ({mine[0].state}, on GPU {where});"
                                          " unload it first")
                    document = classify(self.snapshot(fresh=True), self.memory_threshold_mib,
                                        self.placement_views(active))
                    chosen = selection or _default_selection(spec, document)
                    uuids = _check_gpus(chosen, document)
                    launched, port = self._launch(spec, chosen.gpu_indexes)
                    tx.insert_placement(
                        model_name=name, gpu_indexes=chosen.gpu_indexes, gpu_uuids=uuids, pid=launched.pid,
                        process_start_time=launched.start_time, port=port, started_at=self.clock(),
                        requested_by=requested_by, log_path=str(launched.log_path))
            except StoreError as error:
                raise StateUnavailable(f"cannot load {name}: {error}") from None
        self._changed()
        return next(view for view in self.models() if view.name == name)

    def _launch(self, spec: ModelConfig, indexes: tuple[int, ...]) -> tuple[Launched, int | None]:
        port = self.processes.free_port() if needs_port(spec) else None
        plan = plan_launch(spec, indexes, port=port, base_env=os.environ, default_cwd=self.settings.state_dir,
                           python=sys.executable)
        try:
            launched = self.processes.launch(model_name=plan.model_name, argv=plan.argv, env=plan.env, cwd=plan.cwd)
        except LaunchError as error:
            raise LaunchFailed(str(error)) from None
        return launched, plan.port

    def unload(self, name: str) -> ModelView:
        """Stop the model's whole process tree (graceful, then forced) and free its GPUs. A model
        removed from the configuration while it ran can still be unloaded."""
        try:
            with self.store.exclusive() as tx:
                mine = [p for p in tx.active_placements() if p.model_name == name]
                if not mine:
                    self.model_spec(name)
                    raise NotLoaded(f"model {name} is not loaded")
                for record in mine:
                    tx.set_state(record.id, ModelState.STOPPING)
        except StoreError as error:
            raise StateUnavailable(f"cannot unload {name}: {error}") from None
        self._changed()
        for record in mine:
            if record.pid:
                self.processes.stop(record.pid, record.process_start_time, self.settings.unload_timeout_seconds)
        try:
            with self.store.exclusive() as tx:
                for record in mine:
                    exit_record = self.processes.exit_record(record.log_file)
                    tx.finish_placement(record.id, state=ModelState.STOPPED, ended_at=self.clock(),
                                        exit_code=exit_record.exit_code if exit_record else None, error=None,
                                        log_tail=self.processes.log_tail(record.log_file))
        except StoreError as error:
            raise StateUnavailable(f"model {name} was stopped but its state could not be saved: {error}") from None
        self.snapshot(fresh=True)
        self._changed()
        return next((view for view in self.models() if view.name == name), _unconfigured_view(mine[-1]))

    # ----------------------------------------------------------------- supervision

    def reconcile(self, *, at_startup: bool = False) -> bool:
        """Notice models that ended, passed their health check, or timed out. True if anything changed.

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
        outcomes: list[Outcome] = []
        promote: list[PlacementRecord] = []
        now = self.clock()
        for record in active:
            alive = record.pid is not None and self.processes.alive(record.pid, record.process_start_time)
            if not alive:
                outcomes.append(self._ending(record, at_startup))
                continue
            if record.state is not ModelState.STARTING:
                continue
            spec = self.settings.model(record.model_name)
            elapsed = (now - record.started_at).total_seconds()
            if spec is None or self._healthy(spec, record, elapsed):
                promote.append(record)
            elif elapsed > spec.startup_timeout_seconds:
                self.processes.stop(record.pid or 0, record.process_start_time, self.settings.unload_timeout_seconds)
                outcomes.append((record, ModelState.FAILED, None,
                                 f"health check did not pass within {spec.startup_timeout_seconds:g} s; stopped"))
        changed = bool(outcomes or promote)
        if changed:
            try:
                with self.store.exclusive() as tx:
                    for record in promote:
                        tx.mark_running(record.id)
                    for record, state, code, error in outcomes:
                        tx.finish_placement(record.id, state=state, ended_at=now, exit_code=code, error=error,
                                            log_tail=self.processes.log_tail(record.log_file))
                    generation = tx.generation()
            except StoreError:
                return False
        if generation != self._store_generation:
            changed = changed or self._store_generation != -1
            self._store_generation = generation
            self._load_runtime_settings()
        if changed:
            self._changed()
        return changed

    def _ending(self, record: PlacementRecord, at_startup: bool) -> Outcome:
        exit_record = self.processes.exit_record(record.log_file)
        if record.state is ModelState.STOPPING:
            return record, ModelState.STOPPED, exit_record.exit_code if exit_record else None, None
        if exit_record is not None:
            code = exit_record.exit_code
            if code == 0:
                return record, ModelState.STOPPED, 0, "the model exited by itself (exit code 0)"
            return record, ModelState.FAILED, code, exit_record.error or f"the model exited with code {code}"
        if at_startup:
            return record, ModelState.STOPPED, None, "not running when gpuwarden started (machine restarted?)"
        return record, ModelState.FAILED, None, "the model's process disappeared (killed?)"

    def _healthy(self, spec: ModelConfig, record: PlacementRecord, elapsed_seconds: float) -> bool:
        url = health_url(spec, record.gpu_indexes, record.port, sys.executable)
        if url is not None:
            return self.processes.healthy(url)
        return elapsed_seconds >= spec.startup_grace_seconds

    def stop_all(self) -> None:
        """Unload every loaded model (used when stop_models_on_exit is set)."""
        for view in self.models():
            if view.loaded:
                with contextlib.suppress(ControllerError):
                    self.unload(view.name)


def _default_selection(spec: ModelConfig, document: StatusDocument) -> Selection:
    """The first idle GPUs, as many as the model wants by default (the CPU in CPU mode)."""
    if document.cpu_mode or spec.default_gpus == 0:
        return Selection.cpu()
    idle = [gpu.index for gpu in document.gpus if gpu.loadable]
    if len(idle) < spec.default_gpus:
        raise LoadRefused(f"model {spec.name} wants {spec.default_gpus} GPU(s); idle now: "
                          f"{', '.join(map(str, idle)) or 'none'}; choose GPUs explicitly")
    return Selection(tuple(idle[: spec.default_gpus]))


def _check_gpus(selection: Selection, document: StatusDocument) -> tuple[str | None, ...]:
    """Refuse a selection that is not safe now; the uuids of the selected GPUs otherwise."""
    if selection.on_cpu:
        return ()
    indexes = selection.gpu_indexes
    if document.cpu_mode:
        raise LoadRefused(f"no GPU available ({document.error}); load onto 'cpu' instead")
    missing = [i for i in indexes if document.gpu(i) is None]
    if missing:
        existing = ", ".join(str(g.index) for g in document.gpus)
        raise BadSelection(f"GPU {', '.join(map(str, missing))} does not exist (GPUs here: {existing})")
    problems = []
    for index in indexes:
        gpu = document.gpu(index)
        assert gpu is not None
        if gpu.state is GpuState.IDLE:
            continue
        if gpu.state is GpuState.MODEL_LOADED:
            problems.append(f"GPU {index} holds model {gpu.model_name}")
        elif gpu.state is GpuState.OCCUPIED_BY_OTHERS:
            problems.append(f"GPU {index} is {gpu.reason}")
        else:
            problems.append(f"GPU {index} is unavailable: {gpu.reason}")
    if problems:
        raise LoadRefused("refused: " + "; ".join(problems))
    return tuple(gpu.uuid for gpu in (document.gpu(i) for i in indexes) if gpu is not None)


def _unconfigured_view(record: PlacementRecord) -> ModelView:
    return ModelView(record.model_name, "(no longer configured)", 0, ModelState.STOPPED, record.gpu_indexes, record.pid,
                     record.port, record.started_at, None, record.requested_by, None, None, None, record.log_path,
                     None)


def _signature(snapshot: Snapshot) -> tuple[object, ...]:
    """What a dashboard shows of a snapshot (not its time): a change here is worth a push."""
    return (snapshot.error, snapshot.gpus, snapshot.processes, snapshot.unassigned_processes)


def current_user() -> str | None:
    try:
        return getpass.getuser()
    except (OSError, KeyError, ImportError):
        return None


def build_controller(settings: Settings, source: GpuSource | None = None) -> Controller:
    """The factory every entry point uses: source from settings, store and logs under state_dir."""
    from gpuwarden.probe import make_source
    from gpuwarden.process.host import LocalProcessHost

    return Controller(
        settings=settings,
        source=source or make_source(settings),
        store=Store(settings.state_dir / "gpuwarden.db"),
        processes=LocalProcessHost(settings.state_dir / "logs"),
    )
