"""The state database: SQLite behind one gateway, one schema, one write path.

Every read and write goes through a :class:`StoreTx`. :meth:`Store.exclusive` opens a
``BEGIN IMMEDIATE`` transaction: SQLite lets one such writer at a time across every process on the
machine (the server and any CLI), which is what serializes loads. The file is untrusted: rows that
do not decode are reported, never trusted, and a corrupt file is left untouched for the user.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import datetime
from pathlib import Path

from gpuwarden.people import AuditEntry
from gpuwarden.store import schema
from gpuwarden.store.accounts import AccountsTx
from gpuwarden.store.base import StoreError
from gpuwarden.store.placements import PlacementsTx


class StoreTx(PlacementsTx, AccountsTx):
    """Reads and writes within one transaction: placements and settings, accounts and the audit trail."""


class Store:
    """The gateway. Each transaction uses its own connection, so threads never share one."""

    def __init__(self, path: Path, busy_timeout_seconds: float = 30.0) -> None:
        self.path = path
        self._busy_timeout_seconds = busy_timeout_seconds
        self._ready = False

    def _connect(self) -> sqlite3.Connection:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            connection = sqlite3.connect(self.path, timeout=self._busy_timeout_seconds, isolation_level=None,
                                         check_same_thread=False)
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

    @contextmanager
    def _transaction(self, begin: str) -> Iterator[StoreTx]:
        connection = self._connect()
        try:
            try:
                connection.execute(begin)
            except sqlite3.OperationalError as error:
                raise StoreError(f"state database {self.path} is busy or locked ({error})") from None
            except sqlite3.Error as error:
                raise StoreError(f"state database {self.path} is unusable ({error})") from None
            try:
                yield StoreTx(connection)
            except BaseException:
                connection.execute("ROLLBACK")
                raise
            try:
                connection.execute("COMMIT")
            except sqlite3.Error as error:
                raise StoreError(f"cannot write state database {self.path}: {error}") from None
        finally:
            connection.close()

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
