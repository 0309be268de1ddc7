"""Pure: the rules a load and the supervision of models follow, as plain functions of values.

Where a load without a selection goes, when a selection is refused and why, and what became of a
model whose process ended. The controller gathers the facts (a status document, a placement, the
launcher's exit record) and applies these; they are unit-tested without any I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

from gpuwarden.classify import StatusDocument
from gpuwarden.config import ModelConfig, Settings
from gpuwarden.errors import BadSelection, GpusBusy, LoadRefused, UnknownModel
from gpuwarden.history import Activity
from gpuwarden.process.exitrecord import ExitRecord
from gpuwarden.records import GpuState, ModelState, ModelView, PlacementRecord, Selection
from gpuwarden.waitlist import WaitEntry, claim_text

# What became of a placement whose process ended: its new state, exit code and error.
Outcome = tuple[ModelState, int | None, str | None]


def configured_model(settings: Settings, name: str) -> ModelConfig:
    """The model of that name, or :class:`UnknownModel` naming the ones there are."""
    spec = settings.model(name)
    if spec is None:
        known = ", ".join(m.name for m in settings.models) or "none configured"
        raise UnknownModel(f"unknown model {name[:80]!r} (known: {known})")
    return spec


def refuse_if_already_loaded(name: str, active: Sequence[PlacementRecord]) -> None:
    mine = [record for record in active if record.model_name == name]
    if mine:
        where = ", ".join(map(str, mine[0].gpu_indexes)) or "CPU"
        raise LoadRefused(f"model {name} is already loaded ({mine[0].state}, on GPU {where}); unload it first")


def default_selection(spec: ModelConfig, document: StatusDocument,
                      claims: Mapping[int, WaitEntry] | None = None) -> Selection:
    """The first idle GPUs nobody waits for, as many as the model wants by default (the CPU in CPU
    mode). Never the CPU instead of GPUs because the GPUs could not be read: that is refused."""
    if document.cpu_mode or spec.default_gpus == 0:
        return Selection.cpu()
    if document.unreadable:
        raise LoadRefused(f"cannot choose GPUs for {spec.name}: {unreadable_reason(document)}; "
                          "to run it on the CPU, choose 'cpu' explicitly")
    idle = [gpu.index for gpu in document.gpus if gpu.loadable and gpu.index not in (claims or {})]
    if len(idle) < spec.default_gpus:
        promised = f" (promised to the queue: GPU {', '.join(map(str, sorted(claims)))})" if claims else ""
        raise LoadRefused(f"model {spec.name} wants {spec.default_gpus} GPU(s); idle now: "
                          f"{', '.join(map(str, idle)) or 'none'}{promised}; choose GPUs explicitly")
    return Selection(tuple(idle[: spec.default_gpus]))


def check_selection(selection: Selection, document: StatusDocument,
                    claims: Mapping[int, WaitEntry] | None = None) -> tuple[str | None, ...]:
    """Refuse a selection that is not safe now (the message names every busy GPU and who holds
    it), or that takes an idle GPU promised to a load waiting in ``claims``; the uuids of the
    selected GPUs otherwise. A refusal for busy GPUs is :class:`GpusBusy` (a load may wait)."""
    if selection.on_cpu:
        return ()
    indexes = selection.gpu_indexes
    if document.cpu_mode:
        raise LoadRefused(f"no GPU available ({document.error}); load onto 'cpu' instead")
    if document.unreadable:
        raise GpusBusy(f"refused: {unreadable_reason(document)}; no model is loaded onto a GPU until "
                       "the GPUs can be read again")
    absent = absent_gpus(indexes, document)
    if absent:
        raise BadSelection(absent)
    problems = []
    for index in indexes:
        gpu = document.gpu(index)
        assert gpu is not None
        if gpu.state is GpuState.IDLE:
            if index in (claims or {}):
                problems.append(claim_text(index, (claims or {})[index]))
            continue
        if gpu.state is GpuState.MODEL_LOADED:
            problems.append(f"GPU {index} holds model {gpu.model_name}")
        elif gpu.state is GpuState.OCCUPIED_BY_OTHERS:
            problems.append(f"GPU {index} is {gpu.reason}")
        else:
            problems.append(f"GPU {index} is unavailable: {gpu.reason}")
    if problems:
        raise GpusBusy("refused: " + "; ".join(problems))
    return tuple(gpu.uuid for gpu in (document.gpu(i) for i in indexes) if gpu is not None)


def check_wait(selection: Selection | None, document: StatusDocument) -> None:
    """Refuse a load that would wait for nothing it can get: no GPUs named (the CPU is never busy),
    or GPUs that do not exist (the last good reading's, while the GPUs are unreadable)."""
    if selection is None or selection.on_cpu:
        raise BadSelection("to wait, name the GPUs to wait for (the CPU is never busy)")
    absent = absent_gpus(selection.gpu_indexes, document) if document.gpus else None
    if absent:
        raise BadSelection(absent)


def absent_gpus(indexes: Sequence[int], document: StatusDocument) -> str | None:
    """'GPU 7 does not exist (GPUs here: 0, 1, 2)' if ``document`` lists not all of ``indexes``."""
    here = sorted(gpu.index for gpu in document.gpus)
    missing = [index for index in indexes if index not in here]
    if not missing:
        return None
    return f"GPU {', '.join(map(str, missing))} does not exist (GPUs here: {', '.join(map(str, here)) or 'none'})"


def unreadable_reason(document: StatusDocument) -> str:
    """'GPU status unreadable (why); last good reading 42 s ago' for refusals and the CLI."""
    age = document.reading_age_seconds
    when = "no good reading yet" if age is None else f"last good reading {age:.0f} s ago"
    return f"GPU status unreadable ({document.error}); {when}"


def ending(record: PlacementRecord, exit_record: ExitRecord | None, *, at_startup: bool) -> Outcome:
    """What became of a model whose process is gone, from its launcher's exit record (if any)."""
    if record.state is ModelState.STOPPING:
        return ModelState.STOPPED, exit_record.exit_code if exit_record else None, None
    if exit_record is not None:
        code = exit_record.exit_code
        if code == 0:
            return ModelState.STOPPED, 0, "the model exited by itself (exit code 0)"
        return ModelState.FAILED, code, exit_record.error or f"the model exited with code {code}"
    if at_startup:
        return ModelState.STOPPED, None, "not running when gpuwarden started (machine restarted?)"
    return ModelState.FAILED, None, "the model's process disappeared (killed?)"


def interrupted_load() -> Outcome:
    return ModelState.FAILED, None, ("the load was cut off before its process was recorded (gpuwarden stopped?);"
                                     " no process of it was found running")


def health_timeout(spec: ModelConfig) -> Outcome:
    return ModelState.FAILED, None, f"health check did not pass within {spec.startup_timeout_seconds:g} s; stopped"


def orphan_stopped(record: PlacementRecord, model_pid: int) -> Outcome:
    """A model whose launcher was killed, stopped by supervision."""
    if record.state is ModelState.STOPPING:
        return ModelState.STOPPED, None, None
    return ModelState.FAILED, None, (f"its launcher (PID {record.pid}) was killed; the model (PID {model_pid})"
                                     " was stopped so that it cannot run untracked")


def idle_since(spec: ModelConfig, record: PlacementRecord | None, activity: Activity,
               running_since: datetime | None, requested_at: datetime | None = None) -> datetime | None:
    """Since when a running model's GPUs have all stayed at or below its ``idle_utilization_percent``:
    never before it was seen running (its start-up is not idle time), nor before its last request
    through the proxy. None if it is not running on GPUs, a GPU is busy or its activity unknown."""
    if record is None or record.state is not ModelState.RUNNING or not record.gpu_indexes or running_since is None:
        return None
    since = [activity.idle_since(index, spec.idle_utilization_percent) for index in record.gpu_indexes]
    known = [at for at in since if at is not None]
    if len(known) != len(since):
        return None
    return max([running_since, *known, *([requested_at] if requested_at else [])])


def idle_reason(spec: ModelConfig, view: ModelView, now: datetime) -> str | None:
    """Why a model is to be unloaded as idle now (its ``idle_unload_minutes`` passed); None if not."""
    if spec.idle_unload_minutes is None or view.idle_since is None:
        return None
    idle_minutes = (now - view.idle_since).total_seconds() / 60
    if idle_minutes < spec.idle_unload_minutes:
        return None
    return (f"idle: its GPUs stayed at or below {spec.idle_utilization_percent}% utilization for"
            f" {int(idle_minutes)} min (idle_unload_minutes = {spec.idle_unload_minutes})")


def model_view(spec: ModelConfig, record: PlacementRecord | None, now: datetime,
               model_pid: int | None = None, idle: datetime | None = None) -> ModelView:
    """A configured model and its newest placement (None: never loaded); ``model_pid``: the model's
    own process, where its launcher recorded it; ``idle``: see :func:`idle_since`."""
    if record is None:
        return ModelView.not_loaded(spec.name, spec.description, spec.default_gpus)
    return ModelView(
        name=spec.name, description=spec.description, default_gpus=spec.default_gpus, state=record.state,
        gpu_indexes=record.gpu_indexes, pid=record.pid, port=record.port, started_at=record.started_at,
        ended_at=record.ended_at, owner=record.owner, exit_code=record.exit_code,
        error=record.error, log_tail=record.log_tail if not record.active else None, log_path=record.log_path,
        uptime_seconds=(now - record.started_at).total_seconds() if record.active else None,
        model_pid=model_pid, idle_since=idle)


def unconfigured_view(record: PlacementRecord) -> ModelView:
    """A model removed from the configuration while it ran, just unloaded."""
    return ModelView(record.model_name, "(no longer configured)", 0, ModelState.STOPPED, record.gpu_indexes,
                     record.pid, record.port, record.started_at, None, record.owner, None, None, None,
                     record.log_path, None)
