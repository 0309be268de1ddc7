"""Accounts, logins and the audit trail on a real state database (a temporary file)."""

from __future__ import annotations

import sqlite3
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gpuwarden import people
from gpuwarden.accounts import DENIALS_PER_MINUTE, Accounts
from gpuwarden.errors import AccountProblem, NotAuthenticated, NotPermitted, TooManyAttempts
from gpuwarden.people import Actor, AuditAction, AuditEntry, AuditResult, AuthMode, Channel
from gpuwarden.store import Store

CLI = Actor("operator", admin=True, channel=Channel.CLI, client="cli")
BOB = Actor("bob", admin=False, channel=Channel.WEB, client="10.0.0.9")
PASSWORD = "correct horse"


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def accounts(tmp_path: Path, clock: Clock) -> Accounts:
    made = Accounts(Store(tmp_path / "gpuwarden.db"), AuthMode.PASSWORD, clock, session_lifetime_hours=1,
                    audit_retention_days=30)
    made.add_user(CLI, "alice", PASSWORD, admin=True)
    made.add_user(CLI, "bob", PASSWORD, admin=False)
    return made


def actions(accounts: Accounts) -> list[tuple[str, str, str | None]]:
    return [(e.action.value, e.result.value, e.user) for e in accounts.recent(100)]


def test_accounts_are_listed_and_changes_audited(accounts: Accounts) -> None:
    assert [(u.name, u.admin) for u in accounts.users()] == [("alice", True), ("bob", False)]
    with pytest.raises(AccountProblem, match="already exists"):
        accounts.add_user(CLI, "bob", PASSWORD, admin=False)
    with pytest.raises(AccountProblem, match="at least 8"):
        accounts.add_user(CLI, "carol", "short", admin=False)
    with pytest.raises(NotPermitted):
        accounts.add_user(BOB, "mallory", PASSWORD, admin=True)  # not an admin
    with pytest.raises(AccountProblem, match="no user"):
        accounts.new_token(CLI, "nobody")
    assert actions(accounts)[:6] == [("token-create", "refused", "operator"), ("user-add", "refused", "bob"),
                                     ("user-add", "refused", "operator"), ("user-add", "refused", "operator"),
                                     ("user-add", "ok", "operator"), ("user-add", "ok", "operator")]
    assert "already exists" in (accounts.recent(10)[3].detail or "")


def test_login_session_and_logout(accounts: Accounts, clock: Clock) -> None:
    login = accounts.login("bob", PASSWORD, "10.0.0.9")
    actor = accounts.session_actor(login.session_id, "10.0.0.9")
    assert actor is not None and (actor.name, actor.admin) == ("bob", False)
    assert accounts.session_actor(login.session_id + "x", "10.0.0.9") is None
    clock.now += timedelta(hours=1, seconds=1)
    assert accounts.session_actor(login.session_id, "10.0.0.9") is None  # expired
    second = accounts.login("bob", PASSWORD, "10.0.0.9")
    accounts.logout(second.session_id, BOB)
    assert accounts.session_actor(second.session_id, "10.0.0.9") is None
    assert actions(accounts)[:3] == [("logout", "ok", "bob"), ("login", "ok", "bob"), ("login", "ok", "bob")]


def test_wrong_passwords_are_refused_audited_and_throttled(accounts: Accounts) -> None:
    for attempt in range(5):
        with pytest.raises(NotAuthenticated, match="wrong user name or password"):
            accounts.login("bob" if attempt % 2 else "nobody", "wrong password", "10.0.0.66")
    with pytest.raises(TooManyAttempts) as throttled:
        accounts.login("bob", PASSWORD, "10.0.0.66")  # the right password, from a throttled address
    assert 0 < throttled.value.retry_after_seconds <= 300
    assert accounts.login("bob", PASSWORD, "10.0.0.10").user.name == "bob"  # bob elsewhere: bob had 2 failures
    entries = accounts.recent(10)
    refused = [e for e in entries if e.action is AuditAction.LOGIN and e.result is AuditResult.REFUSED]
    assert len(refused) == 6 and {e.client for e in refused} == {"10.0.0.66"}
    assert "too many failed logins" in (refused[0].detail or "")


def test_password_change_ends_sessions_and_tokens_authenticate(accounts: Accounts) -> None:
    login = accounts.login("bob", PASSWORD, "10.0.0.9")
    token = accounts.new_token(CLI, "bob")
    assert (accounts.token_actor(token, "10.0.0.9") or BOB).name == "bob"
    assert accounts.token_actor("gwt_" + "x" * 43, "10.0.0.9") is None
    assert accounts.token_actor(token[4:], "10.0.0.9") is None  # not a token at all
    accounts.set_password(CLI, "bob", "battery staple")
    assert accounts.session_actor(login.session_id, "10.0.0.9") is None
    with pytest.raises(NotAuthenticated):
        accounts.login("bob", PASSWORD, "10.0.0.9")
    assert accounts.token_actor(token, "10.0.0.9") is not None  # tokens stay until revoked
    assert accounts.revoke_tokens(CLI, "bob") == 1
    assert accounts.token_actor(token, "10.0.0.9") is None


def test_secrets_are_not_in_the_database(accounts: Accounts, tmp_path: Path) -> None:
    token = accounts.new_token(CLI, "alice")
    login = accounts.login("alice", PASSWORD, "127.0.0.1")
    raw = (tmp_path / "gpuwarden.db").read_bytes()
    for secret in (token, login.session_id, PASSWORD):
        assert secret.encode() not in raw


def test_removing_users_keeps_an_admin(accounts: Accounts) -> None:
    with pytest.raises(AccountProblem, match="last admin"):
        accounts.remove_user(CLI, "alice")
    token = accounts.new_token(CLI, "bob")
    accounts.remove_user(CLI, "bob")
    assert accounts.token_actor(token, "x") is None
    with pytest.raises(AccountProblem, match="no user"):
        accounts.remove_user(CLI, "bob")
    accounts.remove_user(CLI, "alice")  # the only account left may go
    assert accounts.users() == []


def test_a_damaged_account_row_cannot_log_in(accounts: Accounts, tmp_path: Path) -> None:
    with closing(sqlite3.connect(tmp_path / "gpuwarden.db")) as db, db:
        db.execute("UPDATE users SET password_hash = 'garbage', created_at = 'yesterday' WHERE name = 'bob'")
    assert [u.name for u in accounts.users()] == ["alice"]
    with pytest.raises(NotAuthenticated):
        accounts.login("bob", PASSWORD, "10.0.0.9")


def test_denials_are_capped_per_minute(accounts: Accounts, clock: Clock) -> None:
    entry = AuditEntry(AuditAction.DENIED, AuditResult.REFUSED, client="10.6.6.6", detail="cross-site request refused")
    for _ in range(DENIALS_PER_MINUTE + 40):
        accounts.record_denial(entry)
    clock.now += timedelta(minutes=1)
    accounts.record_denial(entry)
    denied = [e for e in accounts.recent(1000) if e.action is AuditAction.DENIED]
    assert len(denied) == DENIALS_PER_MINUTE + 1
    assert "and 40 similar refusals" in (denied[0].detail or "")


def test_audit_is_pruned_by_age(accounts: Accounts, clock: Clock) -> None:
    accounts.record(AuditEntry(AuditAction.LOAD, AuditResult.OK, user="old"))
    clock.now += timedelta(days=31)
    accounts.record(AuditEntry(AuditAction.LOAD, AuditResult.OK, user="new"))
    assert accounts.prune() >= 1
    assert "old" not in {e.user for e in accounts.recent(100)} and "new" in {e.user for e in accounts.recent(100)}


def test_a_burst_of_concurrent_guesses_is_throttled_like_a_sequence(accounts: Accounts) -> None:
    outcomes: list[str] = []

    def guess(password: str) -> None:
        try:
            accounts.login("bob", password, "10.0.0.77")
            outcomes.append("in")
        except TooManyAttempts:
            outcomes.append("throttled")
        except NotAuthenticated:
            outcomes.append("wrong")

    with ThreadPoolExecutor(max_workers=12) as pool:
        list(pool.map(guess, ["wrong guess"] * 24 + [PASSWORD]))
    assert Counter(outcomes) == {"wrong": 5, "throttled": 20}  # the right password came too late


def test_sessions_work_only_from_their_address(accounts: Accounts) -> None:
    login = accounts.login("bob", PASSWORD, "10.0.0.9")
    assert accounts.session_actor(login.session_id, "10.0.0.9") is not None
    assert accounts.session_actor(login.session_id, "127.0.0.1") is None  # the cookie seen by another server


def test_a_password_changed_during_a_login_wins(accounts: Accounts, monkeypatch: pytest.MonkeyPatch) -> None:
    real = people.password_matches

    def matches_then_changed(stored: str | None, password: str) -> bool:
        result = real(stored, password)
        monkeypatch.setattr(people, "password_matches", real)
        accounts.set_password(CLI, "bob", "battery staple")  # an admin, between the check and the session
        return result

    monkeypatch.setattr(people, "password_matches", matches_then_changed)
    with pytest.raises(NotAuthenticated):
        accounts.login("bob", PASSWORD, "10.0.0.9")
    assert accounts.login("bob", "battery staple", "10.0.0.9").user.name == "bob"


def test_names_that_are_no_account_are_not_written_down(accounts: Accounts) -> None:
    with pytest.raises(NotAuthenticated):
        accounts.login("hunter2-typed-in-the-name-field", "x" * 8, "10.0.0.5")
    with pytest.raises(NotAuthenticated):
        accounts.login("bob", "x" * 8, "10.0.0.5")
    newest = accounts.recent(2)
    assert [(e.user, e.detail) for e in newest] == [("bob", "wrong password"), (None, "no such account")]


def test_past_the_cap_refusals_are_deleted_first(accounts: Accounts) -> None:
    for index in range(6):
        accounts.record(AuditEntry(AuditAction.LOGIN, AuditResult.REFUSED if index % 2 else AuditResult.OK,
                                   user=f"u{index}"))
    total = len(accounts.recent(1000))
    accounts.prune(keep_at_most=total - 3)
    users = {e.user for e in accounts.recent(1000)}
    assert {"u0", "u2", "u4"} <= users and not {"u1", "u3", "u5"} & users
