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
from gpuwarden.store.connections import FileIdentity, ThreadConnections, file_identity
from gpuwarden.store.placements import PlacementsTx
from gpuwarden.store.waitlist import WaitlistTx

OWN_STEPS_KEPT = 1024


class StoreTx(PlacementsTx, AccountsTx, WaitlistTx):
    """Reads and writes within one transaction: placements and settings, accounts and the audit
    trail, the queue of waiting loads."""


class Store:
    """The gateway. Each thread keeps one connection of its own (:mod:`gpuwarden.store.connections`);
    a connection that failed is closed and opened anew by the next transaction, and all of them when
    the file at the path is replaced or removed."""

    def __init__(self, path: Path, busy_timeout_seconds: float = 30.0) -> None:
        self.path = path
        self._busy_timeout_seconds = busy_timeout_seconds
        self._ready = False
        self._identity: FileIdentity | None = None  # the file the connections are open on
        self._connections = ThreadConnections()
        self._lock = threading.Lock()
        self._watch: list[sqlite3.Connection] = []  # the data_version connection, once opened
        self._watch_epoch = 0
        self._own_steps: dict[int, int] = {}  # generation -> the generation a commit here left (bounded)
        weakref.finalize(self, _close_watch, self._lock, self._watch)

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
        if self._identity is None:
            self._identity = file_identity(self.path)
        return connection

    def _follow_the_file(self) -> None:
        """If the file at the path is no longer the one the connections are open on (replaced, moved
        aside, removed), let them all go: what they read and wrote is another file's."""
        if self._identity is None or file_identity(self.path) == self._identity:
            return
        with self._lock:
            self._identity = None
            self._ready = False
            self._own_steps.clear()
            _close_watch_unlocked(self._watch)
        self._connections.close()

    def close(self) -> None:
        """Close every kept connection (a server stopping; tests, before their files are removed)."""
        self._connections.close()
        _close_watch(self._lock, self._watch)

    def data_version(self) -> int | None:
        """A number that changes whenever any connection (this process's or another's) commits a
        change: what was read from the database may be used again while it stays the same. Never
        waits on a writer: None if the database is busy or unusable (read it anew)."""
        self._follow_the_file()
        with self._lock:
            try:
                if not self._watch:
                    self._watch.append(self._connect(busy_timeout_seconds=0))
                    self._watch_epoch += 1  # a new connection counts anew: never repeat an old number
                row = self._watch[0].execute("PRAGMA data_version").fetchone()
                return self._watch_epoch << 40 | int(row[0])
            except (StoreError, sqlite3.Error, TypeError, ValueError):
                _close_watch_unlocked(self._watch)
                return None

    @contextmanager
    def _transaction(self, begin: str) -> Iterator[StoreTx]:
        self._follow_the_file()
        connection, kept = self._connections.acquire(self._connect)
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
            except BaseException as error:
                with contextlib.suppress(sqlite3.Error):
                    connection.execute("ROLLBACK")
                # the database's own trouble: a new connection next time; a refusal: the connection is fine
                healthy = not isinstance(error, (StoreError, sqlite3.Error))
                raise
            try:
                connection.execute("COMMIT")
            except sqlite3.Error as error:
                with contextlib.suppress(sqlite3.Error):
                    connection.execute("ROLLBACK")
                raise StoreError(f"cannot write state database {self.path}: {error}") from None
            healthy = True
            self._note_own_steps(tx.own_steps)
        finally:
            if kept:
                self._connections.release(connection, healthy=healthy)
            else:
                with contextlib.suppress(sqlite3.Error):
                    connection.close()

    def _note_own_steps(self, steps: list[tuple[int, int]]) -> None:
        if not steps:
            return
        with self._lock:
            self._own_steps.update(steps)
            while len(self._own_steps) > OWN_STEPS_KEPT:
                del self._own_steps[next(iter(self._own_steps))]

    def changed_by_others(self, seen: int, now: int) -> bool:
        """Did a commit of another store (another process, the CLI) move the generation from ``seen``
        to ``now``, rather than this store's own commits alone?"""
        with self._lock:
            generation, steps = seen, 0
            while generation != now and generation in self._own_steps and steps <= len(self._own_steps):
                generation, steps = self._own_steps[generation], steps + 1
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



def _close_watch_unlocked(watch: list[sqlite3.Connection]) -> None:
    for connection in watch:
        with contextlib.suppress(sqlite3.Error):
            connection.close()
    watch.clear()


def _close_watch(lock: threading.Lock, watch: list[sqlite3.Connection]) -> None:
    with lock:
        _close_watch_unlocked(watch)
