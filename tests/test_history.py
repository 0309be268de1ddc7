"""The last hour of each GPU, kept by the server: a window that slides, thinning of frequent readings,
gaps for unreadable ones, how long a GPU has been idle, and the JSON the API serves."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

from gpuwarden.history import MAX_SAMPLES_PER_GPU, WINDOW_SECONDS, History
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


def test_how_long_a_gpu_has_been_idle() -> None:
    history = History()
    for minute, utilization in enumerate([80, 70, 3, 0, 5, 2]):
        history = history.adding(reading(START + timedelta(minutes=10 * minute), utilization, None))
    now = START + timedelta(minutes=55)
    assert history.idle_seconds(0, 5, now) == 35 * 60  # at or below 5% since minute 20
    assert history.idle_seconds(0, 1, now) is None  # 2% now: not idle by that measure
    assert history.idle_seconds(1, 5, now) is None  # GPU 1 reported no utilization
    assert History().idle_seconds(0, 5, now) is None


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
