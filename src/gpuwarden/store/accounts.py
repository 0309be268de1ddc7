"""Accounts, API tokens, login sessions and the audit trail, as the state database keeps them.

Secrets are never stored: passwords as argon2id hashes, tokens and session ids as SHA-256 digests.
"""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime

from gpuwarden.people import AuditAction, AuditEntry, AuditResult, UserRecord
from gpuwarden.store.base import TxCore, iso, parse_time, text_or_none

MAX_AUDIT_TEXT = 500


class AccountsTx(TxCore):
    """Users, tokens, sessions, audit."""

    # ------------------------------------------------------------- users

    def users(self) -> list[UserRecord]:
        rows = self._execute(
            "SELECT u.*, (SELECT COUNT(*) FROM api_tokens t WHERE t.user_name = u.name) AS token_count"
            " FROM users u ORDER BY u.name").fetchall()
        return [user for user in map(_user, rows) if user is not None]

    def user(self, name: str) -> UserRecord | None:
        row = self._execute(
            "SELECT u.*, (SELECT COUNT(*) FROM api_tokens t WHERE t.user_name = u.name) AS token_count"
            " FROM users u WHERE u.name = ?", (name,)).fetchone()
        return _user(row) if row is not None else None

    def add_user(self, name: str, password_hash: str, *, admin: bool, at: datetime) -> None:
        self._execute("INSERT INTO users (name, password_hash, admin, created_at) VALUES (?, ?, ?, ?)",
                      (name, password_hash, int(admin), iso(at)))

    def set_password(self, name: str, password_hash: str) -> bool:
        return self._execute("UPDATE users SET password_hash = ? WHERE name = ?", (password_hash, name)).rowcount == 1

    def remove_user(self, name: str) -> bool:
        """Remove the account with its tokens and sessions."""
        self._execute("DELETE FROM api_tokens WHERE user_name = ?", (name,))
        self.end_sessions(name)
        return self._execute("DELETE FROM users WHERE name = ?", (name,)).rowcount == 1

    # ------------------------------------------------------------- tokens and sessions

    def add_token(self, name: str, digest: str, *, at: datetime) -> None:
        self._execute("INSERT INTO api_tokens (digest, user_name, created_at) VALUES (?, ?, ?)",
                      (digest, name, iso(at)))

    def revoke_tokens(self, name: str) -> int:
        return self._execute("DELETE FROM api_tokens WHERE user_name = ?", (name,)).rowcount

    def token_user(self, digest: str) -> UserRecord | None:
        row = self._execute("SELECT user_name FROM api_tokens WHERE digest = ?", (digest,)).fetchone()
        return self.user(row["user_name"]) if row is not None and isinstance(row["user_name"], str) else None

    def add_session(self, name: str, digest: str, *, client: str, at: datetime, expires_at: datetime) -> None:
        self._execute("DELETE FROM sessions WHERE expires_at < ?", (iso(at),))
        self._execute("INSERT INTO sessions (digest, user_name, client, created_at, expires_at) VALUES (?, ?, ?, ?, ?)",
                      (digest, name, client, iso(at), iso(expires_at)))

    def session_user(self, digest: str, *, client: str, now: datetime) -> UserRecord | None:
        """The account of a live session used from the address it was opened from."""
        row = self._execute("SELECT user_name, expires_at FROM sessions WHERE digest = ? AND client = ?",
                            (digest, client)).fetchone()
        if row is None or not isinstance(row["user_name"], str):
            return None
        expires_at = parse_time(row["expires_at"])
        if expires_at is None or expires_at <= now:
            return None
        return self.user(row["user_name"])

    def end_session(self, digest: str) -> None:
        self._execute("DELETE FROM sessions WHERE digest = ?", (digest,))

    def end_sessions(self, name: str) -> int:
        return self._execute("DELETE FROM sessions WHERE user_name = ?", (name,)).rowcount

    # ------------------------------------------------------------- audit

    def add_audit(self, entry: AuditEntry, *, at: datetime) -> None:
        def clip(text: str | None) -> str | None:
            return None if text is None else text[:MAX_AUDIT_TEXT]

        self._execute(
            "INSERT INTO audit (at, user_name, client, action, model, gpus, result, detail)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (iso(entry.at or at), clip(entry.user), clip(entry.client), entry.action.value, clip(entry.model),
             None if entry.gpus is None else json.dumps(list(entry.gpus)), entry.result.value, clip(entry.detail)))

    def audit(self, limit: int, *, before_id: int | None = None) -> list[AuditEntry]:
        """Newest first."""
        rows = self._execute("SELECT * FROM audit WHERE id < ? ORDER BY id DESC LIMIT ?",
                             (before_id if before_id is not None else 2**62, limit)).fetchall()
        return [entry for entry in map(_audit_entry, rows) if entry is not None]

    def prune_audit(self, *, older_than: datetime, keep_at_most: int) -> int:
        """Delete entries older than ``older_than``; past ``keep_at_most`` entries, refusals go first
        (anyone can cause them), then the oldest."""
        removed = self._execute("DELETE FROM audit WHERE at < ?", (iso(older_than),)).rowcount
        excess = int(self._execute("SELECT COUNT(*) FROM audit").fetchone()[0]) - keep_at_most
        if excess > 0:
            removed += self._execute(
                "DELETE FROM audit WHERE id IN (SELECT id FROM audit WHERE result = ? ORDER BY id LIMIT ?)",
                (AuditResult.REFUSED.value, excess)).rowcount
            removed += self._execute(
                "DELETE FROM audit WHERE id <= (SELECT id FROM audit ORDER BY id DESC LIMIT 1 OFFSET ?)",
                (keep_at_most,)).rowcount
        return removed


def _user(row: sqlite3.Row) -> UserRecord | None:
    """An account row; one that does not decode is no account (it cannot log in)."""
    created_at = parse_time(row["created_at"])
    if not isinstance(row["name"], str) or not isinstance(row["password_hash"], str) or created_at is None:
        return None
    return UserRecord(name=row["name"], admin=row["admin"] == 1, created_at=created_at,
                      password_hash=row["password_hash"], token_count=int(row["token_count"] or 0))


def _audit_entry(row: sqlite3.Row) -> AuditEntry | None:
    try:
        action, result = AuditAction(row["action"]), AuditResult(row["result"])
        gpus = json.loads(row["gpus"]) if isinstance(row["gpus"], str) else None
    except (ValueError, TypeError):
        return None
    if gpus is not None and not (isinstance(gpus, list) and all(isinstance(i, int) for i in gpus)):
        gpus = None
    return AuditEntry(action, result, user=text_or_none(row["user_name"]), client=text_or_none(row["client"]),
                      model=text_or_none(row["model"]), gpus=None if gpus is None else tuple(gpus),
                      detail=text_or_none(row["detail"]), at=parse_time(row["at"]), id=int(row["id"]))
