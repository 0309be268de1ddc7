"""Server-sent events, pushed: a change (from any thread: a load, the monitor, a GPU reading) wakes
every open ``/events`` stream at once through one asyncio event, instead of each stream polling the
controller. An idle server with hundreds of dashboards open does nothing but a keepalive now and then.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

from gpuwarden.changes import ChangeSignal

KEEPALIVE_SECONDS = 15.0


class EventHub:
    """The event loop's side of a :class:`ChangeSignal`: one asyncio event per change, replaced once
    it fired, that every stream awaits. Bound to the loop of the first stream (the server's)."""

    def __init__(self, changes: ChangeSignal) -> None:
        self._changes = changes
        self._loop: asyncio.AbstractEventLoop | None = None
        self._event: asyncio.Event | None = None
        changes.listen(self._from_any_thread)

    def _from_any_thread(self) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._fire)

    def _fire(self) -> None:
        if self._event is not None:
            self._event.set()
        self._event = asyncio.Event()

    def _current(self) -> asyncio.Event:
        loop = asyncio.get_running_loop()
        if loop is not self._loop or self._event is None:  # the first stream, or the app run anew
            self._loop = loop
            self._event = asyncio.Event()
        return self._event

    async def stream(self, disconnected: Callable[[], Awaitable[bool]]) -> AsyncIterator[str]:
        """``update`` events (with the version) as changes happen, a keepalive comment when idle."""
        seen = self._changes.version
        yield "retry: 2000\n\n"
        while not await disconnected():
            event = self._current()
            if self._changes.version == seen:
                try:
                    await asyncio.wait_for(event.wait(), KEEPALIVE_SECONDS)
                except TimeoutError:
                    yield ": keepalive\n\n"
                    continue
            seen = self._changes.version
            yield f"event: update\ndata: {seen}\n\n"
