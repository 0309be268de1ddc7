"""The last hour of each GPU, kept by the server: a window that slides, thinning of frequent readings,
gaps for unreadable ones, how long a GPU has been idle, and the JSON the API serves."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from gpuwarden.history import MAX_SAMPLES_PER_GPU, WINDOW_SECONDS, Activity, History
from gpuwarden.records import GpuReading, Snapshot

START = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)


def reading(at: datetime, *utilization: int | None, memory_mib: int = 500) -> Snapshot:
    gpus = tuple(GpuReading(index=i, memory_used_mib=memory_mib, memory_total_mib=24000, utilization_percent=u)
                 for i, u in enumerate(utilization))
    return Snapshot(taken_at=at, source="t", gpus=gpus)


def test_an_hour_is_kept_and_older_readings_fall_out() -> None:
    history = History()
    for minute in range(0, 121, 10):
        history = history.adding(reading(START + timedelta(minutes=minute), minute % 100))
    samples = history.of(0)
    assert [s.at for s in samples] == [START + timedelta(minutes=m) for m in range(70, 121, 10)]
    assert (samples[-1].utilization_percent, samples[-1].memory_used_mib) == (20, 500)
    assert history.of(5) == ()


def test_readings_moments_apart_are_thinned_to_the_newest() -> None:
    history = History()
    for second in range(0, 600):  # one a second for ten minutes
        history = history.adding(reading(START + timedelta(seconds=second), second % 7))
    gap = WINDOW_SECONDS / MAX_SAMPLES_PER_GPU
    samples = history.of(0)
    assert 600 / gap - 1 <= len(samples) <= 600 / (gap - 1) + 2, len(samples)
    assert samples[-1].at == START + timedelta(seconds=599)  # the newest is always there
    anchored = samples[:-1]
    assert all((b.at - a.at).total_seconds() >= gap - 1 for a, b in itertools.pairwise(anchored))


def test_an_unreadable_reading_leaves_a_gap_not_a_zero() -> None:
    history = History().adding(reading(START, 50))
    failed = Snapshot(taken_at=START + timedelta(minutes=1), source="t", error="nvidia-smi hung", unreadable=True)
    assert history.adding(failed) is history


def test_how_long_a_gpu_has_been_idle_at_each_level() -> None:
    activity = Activity()
    for minute, utilization in enumerate([80, 70, 3, 0, 5, 2]):
        activity = activity.adding(reading(START + timedelta(minutes=10 * minute), utilization, None))
    assert activity.idle_since(0, 5) == START + timedelta(minutes=10)  # last above 5 %: the 70 % reading
    assert activity.idle_since(0, 2) == START + timedelta(minutes=40)  # the 5 % reading was above 2 %
    assert activity.idle_since(0, 99) == START  # never above 99 % since it was first seen
    assert activity.idle_since(0, 0) is None  # 2 % now: busy by that measure
    assert activity.idle_since(1, 5) is None  # utilization N/A: never idle
    assert activity.idle_since(2, 5) is None and Activity().idle_since(0, 5) is None


def test_activity_outlasts_the_history_and_a_failed_reading_counts_as_busy() -> None:
    activity = Activity().adding(reading(START, 90))
    for hour in range(1, 6):
        activity = activity.adding(reading(START + timedelta(hours=hour), 1))
    assert activity.idle_since(0, 5) == START  # five idle hours, beyond the history's one
    failed = Snapshot(taken_at=START + timedelta(hours=6), source="t", error="nvidia-smi hung", unreadable=True)
    assert activity.adding(failed).idle_since(0, 5) is None
    assert activity.adding(failed).adding(reading(START + timedelta(hours=7), 1)).idle_since(0, 5) == (
        START + timedelta(hours=6))  # counted anew from the failed reading


def test_the_json_of_the_history() -> None:
    document = History().adding(reading(START, 42, 7)).to_dict()
    assert document == {"window_seconds": 3600, "gpus": [
        {"index": 0, "samples": [{"at": "2026-11-27T10:00:00Z", "memory_used_mib": 500, "utilization_percent": 42}]},
        {"index": 1, "samples": [{"at": "2026-11-27T10:00:00Z", "memory_used_mib": 500, "utilization_percent": 7}]}]}


def test_readings_more_often_than_the_cap_allows_stay_under_it() -> None:
    history = History()
    for tick in range(0, 2 * WINDOW_SECONDS * 2, 5):  # every 2.5 s for two hours
        history = history.adding(reading(START + timedelta(seconds=tick / 2), 10))
    assert len(history.of(0)) <= MAX_SAMPLES_PER_GPU + 1


@given(st.lists(st.one_of(st.none(), st.integers(min_value=0, max_value=100)), min_size=1, max_size=30),
       st.integers(min_value=0, max_value=99))
def test_activity_agrees_with_counting_by_hand(utilizations: list[int | None], level: int) -> None:
    activity = Activity()
    for minute, utilization in enumerate(utilizations):
        activity = activity.adding(reading(START + timedelta(minutes=minute), utilization))
    busy = [m for m, u in enumerate(utilizations) if u is None or u > level]
    last_busy = busy[-1] if busy else 0  # never busy: idle since first seen
    expected = None if last_busy == len(utilizations) - 1 else START + timedelta(minutes=last_busy)
    assert activity.idle_since(0, level) == expected
