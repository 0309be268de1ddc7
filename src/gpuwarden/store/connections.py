"""The state database's connections: each thread keeps one (threads never share one), opened on the
file that is at the database's path.

A connection is SQLite's cheapest part to keep (a transaction on a kept one costs a twentieth of
opening one). What it must never do is outlive its file: :func:`file_identity` tells when the file at
the path was replaced or removed, and the store then lets every connection go.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import weakref
from collections.abc import Callable
from pathlib import Path

FileIdentity = tuple[int, int]  # (device, inode; the file index on Windows)


def file_identity(path: Path) -> FileIdentity | None:
    """Which file is at ``path`` now; None if there is none."""
    try:
        status = path.stat()
    except OSError:
        return None
    return status.st_dev, status.st_ino


class ThreadConnections:
    """One kept connection per thread, opened with the ``connect`` given when a thread first needs one
    (given per call: holding the store's method would tie the two in a cycle the garbage collector
    alone breaks). A thread that asks again inside its own transaction gets a connection of its own
    for that transaction."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # thread ident -> (the thread, its connection); a plain dict, so that a dropped store closes its
        # files at once (a threading.local would hold them until the garbage collector runs)
        self._kept: dict[int, tuple[weakref.ref[threading.Thread], sqlite3.Connection]] = {}
        self._in_use: set[sqlite3.Connection] = set()
        # sqlite3 connections are freed by the garbage collector only (a reference cycle of their own)
        weakref.finalize(self, _close_kept, self._lock, self._kept)

    def acquire(self, connect: Callable[[], sqlite3.Connection]) -> tuple[sqlite3.Connection, bool]:
        """A connection for one transaction, and whether it is this thread's kept one."""
        thread = threading.current_thread()
        ident = thread.ident or 0
        with self._lock:
            kept = self._kept.get(ident)
            mine = kept is not None and kept[0]() is thread
            if kept is not None and mine and kept[1] not in self._in_use:
                self._in_use.add(kept[1])
                return kept[1], True
        connection = connect()
        if mine:
            return connection, False  # a transaction inside this thread's own
        with self._lock:
            self._close_for_ended_threads()
            self._kept[ident] = (weakref.ref(thread), connection)
            self._in_use.add(connection)
        return connection, True

    def release(self, connection: sqlite3.Connection, *, healthy: bool) -> None:
        """The transaction on ``connection`` ended: keep it if it is still kept and healthy, else close it."""
        with self._lock:
            self._in_use.discard(connection)
            ident = next((ident for ident, (_, kept) in self._kept.items() if kept is connection), None)
            if ident is not None:
                if healthy and not connection.in_transaction:
                    return
                del self._kept[ident]
        with contextlib.suppress(sqlite3.Error):
            connection.close()

    def close(self) -> None:
        """Let every connection go: idle ones are closed now, one in use when its transaction ends."""
        with self._lock:
            idle = [connection for _, connection in self._kept.values() if connection not in self._in_use]
            self._kept.clear()
        for connection in idle:
            with contextlib.suppress(sqlite3.Error):
                connection.close()

    def _close_for_ended_threads(self) -> None:
        """Under the lock: close the connections of threads that ended (a thread pool's idle workers)."""
        for ident, (thread_ref, connection) in list(self._kept.items()):
            thread = thread_ref()
            if (thread is None or not thread.is_alive()) and connection not in self._in_use:
                del self._kept[ident]
                with contextlib.suppress(sqlite3.Error):
                    connection.close()


def _close_kept(lock: threading.Lock, kept: dict[int, tuple[weakref.ref[threading.Thread], sqlite3.Connection]],
                ) -> None:
    with lock:
        connections = [connection for _, connection in kept.values()]
        kept.clear()
    for connection in connections:
        with contextlib.suppress(sqlite3.Error):
            connection.close()
