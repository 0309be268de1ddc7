"""The pure rules about people: who may do what, credentials, the login throttle, audit entries."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gpuwarden import people
from gpuwarden.people import Actor, AuditAction, AuditEntry, AuditResult, AuthMode, Channel

ALICE = Actor("alice", admin=False, channel=Channel.WEB, client="10.0.0.5")
ADMIN = Actor("root", admin=True, channel=Channel.WEB)
ANONYMOUS = Actor(None, admin=False, channel=Channel.WEB, client="127.0.0.1")


def test_only_the_owner_or_an_admin_unloads_where_there_are_accounts() -> None:
    assert people.may_unload(ALICE, "alice", AuthMode.PASSWORD)
    assert not people.may_unload(ALICE, "bob", AuthMode.PASSWORD)
    assert not people.may_unload(ALICE, None, AuthMode.PASSWORD)  # owner unknown: admins only
    assert people.may_unload(ADMIN, "bob", AuthMode.PASSWORD)
    assert not people.may_unload(ANONYMOUS, None, AuthMode.PASSWORD)  # no name never matches "no owner"
    assert people.may_unload(ANONYMOUS, "bob", AuthMode.NONE)  # no accounts: everyone


def test_settings_and_accounts_are_for_admins() -> None:
    assert not people.may_administer(ALICE, AuthMode.PASSWORD)
    assert people.may_administer(ADMIN, AuthMode.PASSWORD)
    assert people.may_administer(ANONYMOUS, AuthMode.NONE)


@pytest.mark.parametrize("name", ["alice", "a.b-c_d@lab", "x" * 64, "7"])
def test_good_user_names(name: str) -> None:
    assert people.user_name_problem(name) is None


@pytest.mark.parametrize("name", ["", "x" * 65, "-alice", "a b", "../x", "a\x1b[2J", "ali\nce", "é"])
def test_bad_user_names(name: str) -> None:
    assert "invalid user name" in (people.user_name_problem(name) or "")


def test_password_length_bounds() -> None:
    assert people.password_problem("short") is not None
    assert people.password_problem("x" * 8) is None
    assert people.password_problem("x" * (people.PASSWORD_MAX_CHARS + 1)) is not None


def test_password_hashes_are_argon2id_and_verify() -> None:
    stored = people.hash_password("correct horse")
    assert stored.startswith("$argon2id$") and "correct horse" not in stored
    assert people.password_matches(stored, "correct horse")
    assert not people.password_matches(stored, "correct horsE")
    assert not people.password_matches(None, "correct horse")  # no such account
    assert not people.password_matches("not a hash", "correct horse")  # a damaged row is no login
    assert not people.password_needs_rehash(stored)


def test_tokens_are_random_and_kept_as_digests() -> None:
    first, second = people.new_secret_token(), people.new_secret_token()
    assert first != second and first.startswith(people.TOKEN_PREFIX) and len(first) > 40
    assert people.token_digest(first) == people.token_digest(first) != people.token_digest(second)
    assert first not in people.token_digest(first)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_login_throttle_blocks_after_max_failures_and_recovers() -> None:
    clock = FakeClock()
    throttle = people.LoginThrottle(max_failures=3, window_seconds=60, clock=clock)
    for _ in range(3):
        assert throttle.begin("user:alice", "client:1") is None  # each attempt counts until it succeeds
    assert throttle.begin("user:alice") == pytest.approx(60)
    assert throttle.begin("client:1", "user:carol") == pytest.approx(60)  # the address is limited too
    assert throttle.retry_after_seconds("user:carol") is None  # a refused attempt counted nothing
    clock.now += 59
    assert throttle.retry_after_seconds("user:alice") == pytest.approx(1)
    clock.now += 1
    assert throttle.begin("user:alice", "client:1") is None  # the window slid past the failures


def test_a_success_resets_the_account_but_not_the_address() -> None:
    throttle = people.LoginThrottle(max_failures=3, window_seconds=60, clock=FakeClock())
    for name in ("root", "alice"):
        assert throttle.begin(f"user:{name}", "client:1") is None  # guesses at others' accounts
    assert throttle.begin("user:me", "client:1") is None
    throttle.succeeded("user:me", "client:1")  # ... then one's own account: the guesses still count
    assert throttle.retry_after_seconds("user:me") is None
    assert throttle.begin("user:bob", "client:1") is None
    assert throttle.begin("user:carol", "client:1") is not None


def test_audit_entry_by_an_actor() -> None:
    entry = AuditEntry.by(ALICE, AuditAction.LOAD, AuditResult.OK, model="m", gpus=(0, 1))
    assert (entry.user, entry.client) == ("alice", "10.0.0.5")
    assert entry.to_dict()["gpus"] == [0, 1] and entry.to_dict()["action"] == "load"
    assert AuditEntry.by(Actor("me", True, Channel.CLI), AuditAction.UNLOAD, AuditResult.OK).client == "cli"
    assert AuditEntry.by(ANONYMOUS, AuditAction.LOAD, AuditResult.REFUSED, gpus=()).to_dict()["gpus"] == []
    assert AuditEntry.by(ANONYMOUS, AuditAction.LOAD, AuditResult.REFUSED).user == "anonymous"


@given(st.text(max_size=300))
def test_user_name_check_never_crashes(name: str) -> None:
    problem = people.user_name_problem(name)
    assert problem is None or problem.startswith("invalid user name")
