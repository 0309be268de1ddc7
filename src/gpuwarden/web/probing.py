"""GPU readings for requests, without holding a worker thread while nvidia-smi runs.

A request that needs a new reading awaits one shared task; the probe itself runs in one thread of
its own limiter. So 50 dashboards polling while nvidia-smi hangs cost one thread, and every endpoint
that needs no new reading answers as fast as ever.
"""

from __future__ import annotations

import asyncio

import anyio
from fastapi import Request

from gpuwarden.controller import Controller
from gpuwarden.probe.shared import Freshness
from gpuwarden.records import Snapshot

PROBE_THREADS = 2  # readers share one probe; a second covers a request that must start after it


class ProbeWaiter:
    """One shared, awaited probe per application."""

    def __init__(self, controller: Controller) -> None:
        self._controller = controller
        self._task: asyncio.Future[Snapshot] | None = None
        self._limiter = anyio.CapacityLimiter(PROBE_THREADS)

    async def snapshot(self, freshness: Freshness) -> Snapshot:
        ready = self._controller.gpus.peek(freshness)
        if ready is not None:
            return ready
        task = self._task
        if task is None or task.done() or freshness.started_after_call:
            task = asyncio.ensure_future(
                anyio.to_thread.run_sync(self._controller.snapshot, freshness, limiter=self._limiter))
            if not freshness.started_after_call:
                self._task = task
        return await asyncio.shield(task)  # a reader that leaves does not cancel the others' probe


def probe_waiter(request: Request) -> ProbeWaiter:
    waiter: ProbeWaiter = request.app.state.probe_waiter
    return waiter
