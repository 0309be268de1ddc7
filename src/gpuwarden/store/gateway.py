"""The state database: SQLite behind one gateway, one schema, one write path.

Every read and write goes through a :class:`StoreTx`. :meth:`Store.exclusive` opens a
``BEGIN IMMEDIATE`` transaction: SQLite lets one such writer at a time across every process on the
machine (the server and any CLI), which is what serializes loads. The file is untrusted: rows that
do not decode are reported, never trusted, and a corrupt file is left untouched for the user.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import weakref
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import datetime
from pathlib import Path

from gpuwarden.people import AuditEntry
from gpuwarden.store import schema
from gpuwarden.store.accounts import AccountsTx
from gpuwarden.store.base import StoreError
from gpuwarden.store.placements import PlacementsTx

OWN_STEPS_KEPT = 1024


class StoreTx(PlacementsTx, AccountsTx):
    """Reads and writes within one transaction: placements and settings, accounts and the audit trail."""


class Store:
    """The gateway. Each thread keeps one connection of its own (threads never share one); a
    connection that failed is closed and opened anew by the next transaction."""

    def __init__(self, path: Path, busy_timeout_seconds: float = 30.0) -> None:
        self.path = path
        self._busy_timeout_seconds = busy_timeout_seconds
        self._ready = False
        # thread ident -> (the thread, its connection); a plain dict, so that a dropped Store closes
        # its files at once (a threading.local would hold them until the garbage collector runs)
        self._kept: dict[int, tuple[weakref.ref[threading.Thread], sqlite3.Connection]] = {}
        self._lock = threading.Lock()
        self._watch: list[sqlite3.Connection] = []  # the data_version connection, once opened
        self._watch_epoch = 0
        self._own_steps: dict[int, int] = {}  # generation -> the generation a commit here left (bounded)
        # sqlite3 connections are freed by the garbage collector only (a reference cycle of their own):
        # a Store that is dropped closes its files at once
        weakref.finalize(self, _close_connections, self._lock, self._kept, self._watch)

    def _connect(self, busy_timeout_seconds: float | None = None) -> sqlite3.Connection:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            connection = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                                         timeout=self._busy_timeout_seconds if busy_timeout_seconds is None
                                         else busy_timeout_seconds)
        except (OSError, sqlite3.Error) as error:
            raise StoreError(f"cannot open state database {self.path}: {error}") from None
        connection.row_factory = sqlite3.Row
        if not self._ready:
            try:
                schema.prepare(connection, self.path)
            except StoreError:
                connection.close()  # never leave the file open (on Windows that blocks moving it aside)
                raise
            except sqlite3.Error as error:
                connection.close()
                raise StoreError(f"state database {self.path} is unusable ({error}); it was left untouched:"
                                 " move it aside to start afresh") from None
            self._ready = True
        return connection

    def _thread_connection(self) -> tuple[sqlite3.Connection, bool]:
        """This thread's kept connection (opened now if it has none), or a connection of its own
        (kept: False) for a transaction opened inside another one."""
        thread = threading.current_thread()
        with self._lock:
            kept = self._kept.get(thread.ident or 0)
        if kept is not None and kept[0]() is thread and not kept[1].in_transaction:
            return kept[1], True
        connection = self._connect()
        if kept is not None and kept[0]() is thread:
            return connection, False
        with self._lock:
            self._close_for_ended_threads()
            self._kept[thread.ident or 0] = (weakref.ref(thread), connection)
        return connection, True

    def _close_for_ended_threads(self) -> None:
        """Under the lock: close the connections of threads that ended (a thread pool's idle workers)."""
        for ident, (thread_ref, connection) in list(self._kept.items()):
            thread = thread_ref()
            if thread is None or not thread.is_alive():
                del self._kept[ident]
                with contextlib.suppress(sqlite3.Error):
                    connection.close()

    def _forget(self, connection: sqlite3.Connection) -> None:
        """Close a kept connection that failed: the next transaction opens a new one."""
        with self._lock:
            for ident, (_, kept) in list(self._kept.items()):
                if kept is connection:
                    del self._kept[ident]
        with contextlib.suppress(sqlite3.Error):
            connection.close()

    def close(self) -> None:
        """Close every kept connection (a server stopping; tests, before their files are removed)."""
        _close_connections(self._lock, self._kept, self._watch)

    def data_version(self) -> int | None:
        """A number that changes whenever any connection (this process's or another's) commits a
        change: what was read from the database may be used again while it stays the same. Never
        waits on a writer: None if the database is busy or unusable (read it anew)."""
        with self._lock:
            try:
                if not self._watch:
                    self._watch.append(self._connect(busy_timeout_seconds=0))
                    self._watch_epoch += 1  # a new connection counts anew: never repeat an old number
                row = self._watch[0].execute("PRAGMA data_version").fetchone()
                return self._watch_epoch << 40 | int(row[0])
            except (StoreError, sqlite3.Error, TypeError, ValueError):
                for connection in self._watch:
                    with contextlib.suppress(sqlite3.Error):
                        connection.close()
                self._watch.clear()
                return None

    @contextmanager
    def _transaction(self, begin: str) -> Iterator[StoreTx]:
        connection, kept = self._thread_connection()
        healthy = False
        try:
            try:
                connection.execute(begin)
            except sqlite3.OperationalError as error:
                healthy = True  # busy: the connection itself is fine
                raise StoreError(f"state database {self.path} is busy or locked ({error})") from None
            except sqlite3.Error as error:
                raise StoreError(f"state database {self.path} is unusable ({error})") from None
            tx = StoreTx(connection)
            try:
                yield tx
            except BaseException:
                connection.execute("ROLLBACK")
                healthy = True
                raise
            try:
                connection.execute("COMMIT")
            except sqlite3.Error as error:
                with contextlib.suppress(sqlite3.Error):
                    connection.execute("ROLLBACK")
                raise StoreError(f"cannot write state database {self.path}: {error}") from None
            healthy = True
            if tx.own_steps:
                with self._lock:
                    self._own_steps.update(tx.own_steps)
                    while len(self._own_steps) > OWN_STEPS_KEPT:
                        del self._own_steps[next(iter(self._own_steps))]
        finally:
            if not kept:
                connection.close()
            elif not healthy or connection.in_transaction:
                self._forget(connection)

    def changed_by_others(self, seen: int, now: int) -> bool:
        """Did a commit of another store (another process, the CLI) move the generation from ``seen``
        to ``now``, rather than this store's own commits alone?"""
        with self._lock:
            generation = seen
            while generation != now and generation in self._own_steps:
                generation = self._own_steps[generation]
        return generation != now

    def read(self) -> AbstractContextManager[StoreTx]:
        """A read transaction (``with store.read() as tx``)."""
        return self._transaction("BEGIN")

    def record_audit(self, entry: AuditEntry, at: datetime) -> bool:
        """One audit entry in a transaction of its own (a refusal, whose action wrote nothing). An
        audit write never fails its caller: False if the database could not take it."""
        try:
            with self.exclusive() as tx:
                tx.add_audit(entry, at=at)
        except StoreError:
            return False
        return True

    def exclusive(self) -> AbstractContextManager[StoreTx]:
        """The one write path: ``BEGIN IMMEDIATE``, one writer machine-wide at a time."""
        return self._transaction("BEGIN IMMEDIATE")


def _close_connections(lock: threading.Lock, kept: dict[int, tuple[weakref.ref[threading.Thread], sqlite3.Connection]],
                       watch: list[sqlite3.Connection]) -> None:
    with lock:
        connections = [connection for _, connection in kept.values()] + watch
        kept.clear()
        watch.clear()
    for connection in connections:
        with contextlib.suppress(sqlite3.Error):
            connection.close()
