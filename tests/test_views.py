"""The dashboard's button rules (seed §5, §6) as plain data."""

from __future__ import annotations

from datetime import UTC, datetime

from gpuwarden.classify import classify
from gpuwarden.present import duration_compact, duration_label, interval_label
from gpuwarden.records import GpuReading, ModelState, ModelView, PlacementView, Snapshot
from gpuwarden.web.views import buttons_for

NOW = datetime(2026, 11, 27, tzinfo=UTC)


def view(name: str, state: str = "not_loaded", gpus: tuple[int, ...] = ()) -> ModelView:
    return ModelView(name, "", 1, ModelState(state), gpus, 1 if state != "not_loaded" else None, None, None, None,
                     None, None, None, None, None, None)


def status(placements: tuple[PlacementView, ...] = ()) -> object:
    gpus = tuple(GpuReading(index=i, memory_used_mib=used, memory_total_mib=100)
                 for i, used in enumerate((0, 500, 0, 0)))
    return classify(Snapshot(taken_at=NOW, source="t", gpus=gpus), 30, placements)


def test_buttons_per_gpu_with_states() -> None:
    document = status((PlacementView("a", (2, 3)),))
    a = buttons_for(view("a", "running", (2, 3)), document)  # type: ignore[arg-type]
    b = buttons_for(view("b"), document)  # type: ignore[arg-type]
    assert [x.label for x in b] == ["GPU 0", "GPU 1 (Occupied)", "⚡ GPU 2 (a)", "⚡ GPU 3 (a)"]
    assert [x.disabled for x in b] == [False, True, True, True]
    assert [x.action for x in a] == ["none", "none", "details", "details"]  # the Unload button unloads
    assert [x.disabled for x in a] == [True, True, False, False] and "click for its details" in a[2].title
    assert a[0].disabled and "already loaded on GPU 2,3" in a[0].title
    assert "unload it first" in b[2].title


def test_cpu_mode_has_one_cpu_button() -> None:
    document = classify(Snapshot(taken_at=NOW, source="t", error="No devices were found"), 30)
    [idle] = buttons_for(view("m"), document)
    [mine] = buttons_for(view("m", "running", ()), document)
    assert (idle.label, idle.action, idle.disabled) == ("CPU", "load", False)
    assert (mine.label, mine.action, mine.disabled) == ("⚡ CPU (m)", "details", False)


def test_labels() -> None:
    assert [interval_label(s) for s in (300, 90, 3600, 2)] == ["5m", "90s", "1h", "2s"]
    assert [duration_label(s) for s in (None, 5, 65, 3725)] == ["", "5s", "1m 05s", "1h 02m"]


def test_compact_durations_and_state_labels_for_both_outputs() -> None:
    from gpuwarden.present import gpu_state_label, model_state_label, terminal_safe
    from gpuwarden.records import ModelState

    assert [duration_compact(s) for s in (5, 65, 3725)] == ["0m05s", "1m05s", "1h02m"]
    document = status((PlacementView("a", (2,)),))
    gpus = document.gpus  # type: ignore[attr-defined]
    assert [gpu_state_label(g) for g in gpus] == ["Idle", "Occupied by someone else", "⚡ Model loaded: a", "Idle"]
    assert [gpu_state_label(g, for_terminal=True) for g in gpus] == [
        "idle", "occupied by someone else", "model loaded: a", "idle"]
    unreadable = classify(Snapshot(taken_at=NOW, source="t", gpus=(GpuReading(index=0),)), 30).gpus[0]
    assert gpu_state_label(unreadable) == "Unavailable"
    assert gpu_state_label(unreadable, for_terminal=True) == "unavailable (memory unreadable)"
    assert model_state_label(ModelState.NOT_LOADED) == model_state_label(ModelState.STOPPED) == "not loaded"
    assert [model_state_label(s) for s in (ModelState.STARTING, ModelState.RUNNING, ModelState.FAILED)] == [
        "starting", "running", "failed"]
    assert terminal_safe("a\x1b]52;c;x\x07b\nc\u009b") == "a?]52;c;x?b?c?" and terminal_safe(None) == "-"


def test_memory_bar_parts_follow_whose_memory_it_is() -> None:
    from gpuwarden.records import GpuProcess
    from gpuwarden.web.views import memory_segments

    processes = (GpuProcess(pid=10, name="llama", type="C", used_memory_mib=6000, gpu_index=0),
                 GpuProcess(pid=20, name="python3", type="C", used_memory_mib=2000, gpu_index=0),
                 GpuProcess(pid=30, name="Xorg", type="G", used_memory_mib=400, gpu_index=0))
    gpu = GpuReading(index=0, memory_used_mib=9000, memory_total_mib=24000)
    from gpuwarden.desktop import DesktopRule

    loaded = classify(Snapshot(taken_at=NOW, source="t", gpus=(gpu,), processes=processes), 30,
                      (PlacementView("m", (0,), frozenset({10})),), DesktopRule.of(["Xorg"])).gpus[0]
    parts = {p.kind: (p.mib, p.percent) for p in memory_segments(loaded)}
    assert parts == {"model": (6600, 27.5), "others": (2000, 8.33), "desktop": (400, 1.67)}  # 600 unlisted: the model's
    busy = classify(Snapshot(taken_at=NOW, source="t", gpus=(GpuReading(index=0, memory_used_mib=363,
                                                                        memory_total_mib=24000),)), 30).gpus[0]
    assert [(p.kind, p.mib) for p in memory_segments(busy)] == [("others", 363)]
    idle = classify(Snapshot(taken_at=NOW, source="t", gpus=(GpuReading(index=0, memory_used_mib=3,
                                                                        memory_total_mib=24000),)), 30).gpus[0]
    assert [(p.kind, p.mib) for p in memory_segments(idle)] == [("idle", 3)]
    assert memory_segments(classify(Snapshot(taken_at=NOW, source="t", gpus=(GpuReading(index=0),)), 30).gpus[0]) == []


def test_sparkline_points_span_the_hour_and_scale_to_the_maximum() -> None:
    from datetime import timedelta

    from gpuwarden.history import Sample
    from gpuwarden.web.views import sparkline

    samples = (Sample(NOW - timedelta(minutes=60), 0, None), Sample(NOW - timedelta(minutes=30), 50, 10),
               Sample(NOW, 100, 90))
    assert sparkline(samples, "memory_used_mib", 100) == "0.0,28.0 60.0,14.0 120.0,0.0"
    assert sparkline(samples, "utilization_percent", 100) == "60.0,25.2 120.0,2.8"
    assert sparkline(samples[:1], "memory_used_mib", 100) is None
    assert sparkline(samples, "memory_used_mib", None) is None


def test_a_busy_gpu_offers_waiting_and_an_idle_one_promised_to_the_queue_is_disabled() -> None:
    from datetime import timedelta

    from gpuwarden.queueing import queue_lines
    from gpuwarden.waitlist import WaitEntry

    document = status((PlacementView("a", (2,)),))
    waits = [WaitEntry(7, "c", (0, 1), "carol", "cli", NOW, NOW + timedelta(hours=1))]
    lines = queue_lines(waits, document)  # type: ignore[arg-type]
    assert lines[0].held_by[0] == "idle" and lines[0].held_by[1].startswith("occupied by someone else: 500 MiB")
    b = buttons_for(view("b"), document, lines)  # type: ignore[arg-type]
    assert [(x.label, x.disabled, x.wait) for x in b] == [
        ("GPU 0 (Queued)", True, True), ("GPU 1 (Occupied)", True, True), ("⚡ GPU 2 (a)", True, True),
        ("GPU 3", False, False)]
    assert b[0].title.startswith("GPU 0 is promised to the queue: carol waits for it (model c, request 7)")
    c = buttons_for(view("c"), document, lines)  # type: ignore[arg-type]
    assert [x.wait for x in c] == [False] * 4  # it waits already
    a = buttons_for(view("a", "running", (2,)), document, lines)  # type: ignore[arg-type]
    assert not any(x.wait for x in a)  # a loaded model waits for nothing
