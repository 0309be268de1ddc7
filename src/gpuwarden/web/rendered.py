"""Bodies rendered once per change: the status document and the dashboard fragment, kept as ready
bytes and served again for as long as nothing they show has changed.

What a body shows is fixed by its *basis*: the GPU reading (one snapshot object per probe), the
state database's ``data_version`` (any commit, by this process or another, a CLI load included),
the controller's change counter, the runtime settings, and for the fragment the viewer. Reading
the basis costs microseconds and never waits (a busy database gives no basis: the body is rendered
anew), so a hundred dashboards asking after one change cost one render. (The GPU history changes
with the reading.) A body rendered while the database could not be read is served, but not kept.

Ages and uptimes are not part of the body's basis: the browser ticks them (``dashboard.js``).
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import anyio

from gpuwarden.accounts import Accounts
from gpuwarden.controller import Controller
from gpuwarden.people import Actor
from gpuwarden.records import Snapshot
from gpuwarden.web.context import content_context
from gpuwarden.web.templating import templates

KEPT_BODIES = 32  # a few viewers (accounts) times a few readings
STATUS, DASHBOARD = "status", "dashboard"


@dataclass(frozen=True)
class Basis:
    """Everything a body depends on; equal bases, equal bodies."""

    view: str
    snapshot_id: int
    data_version: int
    change_version: int
    runtime: tuple[int, ...]
    viewer: tuple[str | None, bool] | None


def status_json(document: dict[str, Any]) -> bytes:
    """The status document as JSON bytes (FastAPI's encoding: UTF-8, compact)."""
    return json.dumps(document, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode("utf-8")


class RenderedViews:
    """The last :data:`KEPT_BODIES` bodies by basis, and how many renders it took (``/metrics``)."""

    def __init__(self, controller: Controller, accounts: Accounts) -> None:
        self._controller = controller
        self._accounts = accounts
        self._lock = threading.Lock()
        # basis -> (the snapshot, pinned so that its id is not reused while kept; the body)
        self._bodies: OrderedDict[Basis, tuple[Snapshot, bytes]] = OrderedDict()
        self._renders = {STATUS: 0, DASHBOARD: 0}
        self._rendering: dict[Basis, asyncio.Future[bytes]] = {}  # touched on the event loop only

    def renders(self) -> dict[str, int]:
        with self._lock:
            return dict(self._renders)

    def basis(self, view: str, snapshot: Snapshot, viewer: Actor | None = None) -> Basis | None:
        """The body's basis now; None if it cannot be known (the database busy): render anew."""
        data_version = self._controller.store.data_version()
        if data_version is None:
            return None
        runtime = self._controller.runtime
        return Basis(view, id(snapshot), data_version, self._controller.changes.version,
                     (runtime.memory_threshold_mib, runtime.refresh_interval_seconds),
                     (viewer.name, viewer.admin) if viewer is not None else None)

    def cached(self, basis: Basis | None) -> bytes | None:
        """The body for ``basis`` if it was rendered already (cheap: safe on the event loop)."""
        if basis is None:
            return None
        with self._lock:
            kept = self._bodies.get(basis)
            if kept is None:
                return None
            self._bodies.move_to_end(basis)
            return kept[1]

    async def status(self, snapshot: Snapshot) -> bytes:
        """:meth:`status_body`, for the event loop."""
        return await self._single_flight(self.basis(STATUS, snapshot), lambda: self.status_body(snapshot))

    async def dashboard(self, snapshot: Snapshot, actor: Actor) -> bytes:
        """:meth:`dashboard_body`, for the event loop."""
        return await self._single_flight(self.basis(DASHBOARD, snapshot, actor),
                                         lambda: self.dashboard_body(snapshot, actor))

    async def _single_flight(self, basis: Basis | None, render: Callable[[], bytes]) -> bytes:
        """The kept body; else the render another reader started for the same basis (awaited, no
        worker thread held: a hundred dashboards told of one change cost one render); else a render
        in a worker thread."""
        kept = self.cached(basis)
        if kept is not None:
            return kept
        if basis is None:
            return await anyio.to_thread.run_sync(render)
        task = self._rendering.get(basis)
        if task is None or task.get_loop() is not asyncio.get_running_loop():
            task = asyncio.ensure_future(anyio.to_thread.run_sync(render))
            self._rendering[basis] = task
            task.add_done_callback(lambda done: self._render_done(basis, done))
        return await asyncio.shield(task)  # a reader that leaves does not cancel the others' render

    def _render_done(self, basis: Basis, task: asyncio.Future[bytes]) -> None:
        if self._rendering.get(basis) is task:
            del self._rendering[basis]
        if not task.cancelled():
            task.exception()  # retrieved: a failed render whose readers all left is not logged as lost

    def status_body(self, snapshot: Snapshot) -> bytes:
        """The status document of ``snapshot`` as JSON (blocks: the database, process trees)."""
        basis = self.basis(STATUS, snapshot)
        body = self.cached(basis)
        if body is None:
            document = self._controller.status_of(snapshot)
            body = status_json(document.to_dict())
            self._keep(STATUS, basis if document.placements_known else None, snapshot, body)
        return body

    def dashboard_body(self, snapshot: Snapshot, actor: Actor) -> bytes:
        """The dashboard fragment (``_content.html``) for ``actor`` (blocks)."""
        basis = self.basis(DASHBOARD, snapshot, actor)
        body = self.cached(basis)
        if body is None:
            context = content_context(self._controller, self._accounts, actor, self._controller.status_of(snapshot))
            body = templates.get_template("_content.html").render(context).encode("utf-8")
            degraded = context["state_error"] is not None or not context["status"].placements_known
            self._keep(DASHBOARD, None if degraded else basis, snapshot, body)  # a passing trouble: not kept
        return body

    def _keep(self, view: str, basis: Basis | None, snapshot: Snapshot, body: bytes) -> None:
        with self._lock:
            self._renders[view] += 1
            if basis is None:
                return
            self._bodies[basis] = (snapshot, body)
            self._bodies.move_to_end(basis)
            while len(self._bodies) > KEPT_BODIES:
                self._bodies.popitem(last=False)
