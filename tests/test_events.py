"""Changes pushed to open dashboards: a change on any thread wakes every `/events` stream at once, and
an idle stream sends only a keepalive now and then (no stream polls the controller)."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from gpuwarden.changes import ChangeSignal
from gpuwarden.web import events
from gpuwarden.web.events import EventHub


def test_a_change_counts_and_calls_its_listeners_even_past_a_failing_one() -> None:
    changes = ChangeSignal()
    heard: list[int] = []

    def failing() -> None:
        raise RuntimeError("a listener's trouble")

    changes.listen(failing)
    changes.listen(lambda: heard.append(changes.version))
    changes.bump()
    changes.bump()
    assert changes.version == 2 and heard == [1, 2]


async def connected() -> bool:
    return False


async def test_one_change_from_another_thread_reaches_a_hundred_streams_at_once() -> None:
    changes = ChangeSignal()
    hub = EventHub(changes)
    streams = [hub.stream(connected) for _ in range(100)]
    assert {await anext(s) for s in streams} == {"retry: 2000\n\n"}
    waiting = [asyncio.ensure_future(anext(s)) for s in streams]
    await asyncio.sleep(0.05)  # every stream awaits the hub now
    started = time.monotonic()
    threading.Timer(0.1, changes.bump).start()  # as the monitor thread would
    got = await asyncio.wait_for(asyncio.gather(*waiting), 5)
    assert set(got) == {"event: update\ndata: 1\n\n"} and time.monotonic() - started < 2
    for stream in streams:
        await stream.aclose()


async def test_an_idle_stream_sends_keepalives_and_a_change_made_between_waits_is_not_lost(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(events, "KEEPALIVE_SECONDS", 0.1)
    changes = ChangeSignal()
    hub = EventHub(changes)
    stream = hub.stream(connected)
    await anext(stream)
    assert await asyncio.wait_for(anext(stream), 5) == ": keepalive\n\n"
    changes.bump()  # on the loop's own thread, while no stream waits
    assert await asyncio.wait_for(anext(stream), 5) == "event: update\ndata: 1\n\n"
    await stream.aclose()


def test_a_hub_serves_the_app_run_anew_on_another_loop() -> None:
    changes = ChangeSignal()
    hub = EventHub(changes)

    async def one_update() -> str:
        stream = hub.stream(connected)
        await anext(stream)
        changes.bump()
        try:
            return await asyncio.wait_for(anext(stream), 5)
        finally:
            await stream.aclose()

    assert asyncio.run(one_update()).startswith("event: update")
    assert asyncio.run(one_update()).startswith("event: update")  # a second loop: the hub follows it


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


pytestmark = pytest.mark.anyio
