"""Pure: a counter of changes people see (a load, an unload, a crash, a new GPU reading), and whoever
wants to hear of them at once: the web layer pushes each one to every open dashboard."""

from __future__ import annotations

import threading
from collections.abc import Callable


class ChangeSignal:
    """``version`` goes up with every change; listeners are called (outside the lock, on the
    changing thread) after it did. A failing listener never fails the change."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._version = 0
        self._listeners: tuple[Callable[[], None], ...] = ()

    @property
    def version(self) -> int:
        return self._version

    def listen(self, listener: Callable[[], None]) -> None:
        with self._lock:
            self._listeners = (*self._listeners, listener)

    def bump(self) -> None:
        with self._lock:
            self._version += 1
            listeners = self._listeners
        for listener in listeners:
            try:
                listener()
            except Exception:  # noqa: BLE001, S112 - a listener's trouble is not the change's
                continue
