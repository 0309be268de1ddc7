"""``GET /metrics``: Prometheus metrics (prometheus-client's text format), for the Grafana setups people
already run. Read at each scrape from what gpuwarden already holds (the latest reading, the models,
the probe and refusal counts): a scrape never runs nvidia-smi.

Per GPU (labels ``gpu``, ``uuid``, ``name``): memory used and total (bytes), a state gauge per state
(1 for the current one), utilization, temperature, power draw and limit, fan. Per model: a state gauge
per state, uptime, loads since start. The probe: readings taken, unreadable readings, seconds spent.
Refusals since start, per action. Renders of the status document and the dashboard fragment.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Callable, Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gpuwarden.classify import GpuStatus, StatusDocument
from gpuwarden.controller import Controller
from gpuwarden.errors import StateUnavailable
from gpuwarden.records import GpuState, ModelState

MIB = 1024 * 1024
GPU_LABELS = ["gpu", "uuid", "name"]
TELEMETRY = (("utilization_percent", "gpuwarden_gpu_utilization_percent", "GPU utilization (%)"),
             ("temperature_c", "gpuwarden_gpu_temperature_celsius", "GPU temperature (degrees Celsius)"),
             ("power_draw_w", "gpuwarden_gpu_power_draw_watts", "Board power draw (W)"),
             ("power_limit_w", "gpuwarden_gpu_power_limit_watts", "Enforced power limit (W)"),
             ("fan_percent", "gpuwarden_gpu_fan_speed_percent", "Fan speed (%)"))


def _labels(gpu: GpuStatus) -> list[str]:
    return [str(gpu.index), gpu.uuid or "", gpu.name or ""]


def gpu_metrics(document: StatusDocument) -> Iterator[Metric]:
    used = GaugeMetricFamily("gpuwarden_gpu_memory_used_bytes", "GPU memory used", labels=GPU_LABELS)
    total = GaugeMetricFamily("gpuwarden_gpu_memory_total_bytes", "GPU memory in all", labels=GPU_LABELS)
    state = GaugeMetricFamily("gpuwarden_gpu_state", "1 for the GPU's state: idle, model_loaded, "
                              "occupied_by_others or unavailable", labels=[*GPU_LABELS, "state"])
    telemetry = {field: GaugeMetricFamily(name, text, labels=GPU_LABELS) for field, name, text in TELEMETRY}
    for gpu in document.gpus:
        labels = _labels(gpu)
        if gpu.memory_used_mib is not None:
            used.add_metric(labels, gpu.memory_used_mib * MIB)
        if gpu.memory_total_mib is not None:
            total.add_metric(labels, gpu.memory_total_mib * MIB)
        for value in GpuState:
            state.add_metric([*labels, value.value], float(gpu.state is value))
        for field, family in telemetry.items():
            reading = getattr(gpu, field)
            if reading is not None:
                family.add_metric(labels, float(reading))
    yield from (used, total, state, *telemetry.values())
    readable = GaugeMetricFamily("gpuwarden_gpus_readable", "1 when the GPUs could be read at the last refresh")
    readable.add_metric([], float(not document.unreadable))
    yield readable


class ControllerCollector(Collector):
    """Everything above, from one controller, at each scrape."""

    def __init__(self, controller: Controller) -> None:
        self.controller = controller

    def collect(self) -> Iterator[Metric]:
        snapshot = self.controller.gpus.latest
        if snapshot is not None:
            yield from gpu_metrics(self.controller.status_of(snapshot))
        yield from self._model_metrics()
        yield from self._queue_metrics()
        yield from self._probe_metrics()

    def _model_metrics(self) -> Iterator[Metric]:
        state = GaugeMetricFamily("gpuwarden_model_state", "1 for the model's state", labels=["model", "state"])
        uptime = GaugeMetricFamily("gpuwarden_model_uptime_seconds", "How long the model has run",
                                   labels=["model"])
        loads = CounterMetricFamily("gpuwarden_model_loads", "Loads since gpuwarden started", labels=["model"])
        try:
            views = self.controller.models()
        except StateUnavailable:
            views = []
        counted = self.controller.tally.loads()
        for view in views:
            for value in ModelState:
                state.add_metric([view.name, value.value], float(view.state is value))
            if view.loaded and view.uptime_seconds is not None:
                uptime.add_metric([view.name], view.uptime_seconds)
            loads.add_metric([view.name], counted.get(view.name, 0))
        yield from (state, uptime, loads)

    def _queue_metrics(self) -> Iterator[Metric]:
        waiting = GaugeMetricFamily("gpuwarden_queue_waiting", "Loads waiting in the queue for each GPU",
                                    labels=["gpu"])
        with contextlib.suppress(StateUnavailable):
            counts = Counter(index for entry in self.controller.queue.waiting() for index in entry.gpu_indexes)
            for index, count in sorted(counts.items()):
                waiting.add_metric([str(index)], count)
        yield waiting

    def _probe_metrics(self) -> Iterator[Metric]:
        stats = self.controller.gpus.stats
        yield CounterMetricFamily("gpuwarden_probes", "GPU readings taken since start", value=stats.probes)
        yield CounterMetricFamily("gpuwarden_probe_errors", "Readings that could not read the GPUs",
                                  value=stats.unreadable)
        yield CounterMetricFamily("gpuwarden_probe_seconds", "Seconds spent reading the GPUs",
                                  value=stats.total_seconds)
        if stats.last_seconds is not None:
            yield GaugeMetricFamily("gpuwarden_probe_last_seconds", "How long the last reading took",
                                    value=stats.last_seconds)
        refusals = CounterMetricFamily("gpuwarden_refusals", "Refused actions since start", labels=["action"])
        for action, count in sorted(self.controller.tally.refusals().items()):
            refusals.add_metric([action], count)
        yield refusals


def metrics_text(registry: CollectorRegistry) -> tuple[bytes, str]:
    """The scrape's body and its content type."""
    return generate_latest(registry), CONTENT_TYPE_LATEST


class RenderCollector(Collector):
    """How many times the status document and the dashboard fragment were rendered (each is
    rendered once per change, however many ask)."""

    def __init__(self, renders: Callable[[], dict[str, int]]) -> None:
        self.renders = renders

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily("gpuwarden_renders", "Renders of a view since start", labels=["view"])
        for view, count in sorted(self.renders().items()):
            family.add_metric([view], count)
        yield family


def registry_for(controller: Controller, renders: Callable[[], dict[str, int]] | None = None) -> CollectorRegistry:
    """A registry of its own per app (not the global one): two apps in one process never mix."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ControllerCollector(controller))
    if renders is not None:
        registry.register(RenderCollector(renders))
    return registry
