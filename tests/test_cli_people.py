"""`gpuwarden users | audit | serve` in process: accounts, API tokens, the audit trail as the OS
account (never $USER), serve's refusals to listen unprotected, and hostile process names that must
not reach the terminal as escape sequences."""

from __future__ import annotations

import io
import json
import os
import re
from pathlib import Path
from typing import Any

import pytest

from gpuwarden.accounts import Accounts, build_accounts
from gpuwarden.cli import main
from gpuwarden.errors import NotAuthenticated
from gpuwarden.people import token_digest
from gpuwarden.probe.users import os_account
from tests.conftest import FAKE_MODELS, FakeSmi, make_settings

PASSWORD = "correct horse battery"
# An OSC 52 clipboard write, a screen clear, a C1 CSI (one byte) and a newline.
HOSTILE = "evil\x1b]52;c;ZXZpbA==\x07\x1b[2J\x9b31m\nrm -rf"
CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


class Cli:
    """Runs ``gpuwarden`` in process with the state under ``tmp_path / "state"``."""

    def __init__(self, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
        self.tmp_path, self.capsys, self.monkeypatch = tmp_path, capsys, monkeypatch
        self.state = tmp_path / "state"

    def __call__(self, *args: str, stdin: str = "", env: dict[str, str] | None = None) -> tuple[int, str, str]:
        """Exit code, stdout, stderr; only the GPUWARDEN_* variables of ``env`` are set."""
        for key in list(os.environ):
            if key.startswith("GPUWARDEN_"):
                self.monkeypatch.delenv(key)
        self.monkeypatch.setenv("GPUWARDEN_STATE_DIR", str(self.state))
        self.monkeypatch.setenv("XDG_CONFIG_HOME", str(self.tmp_path / "config"))
        for key, value in (env or {}).items():
            self.monkeypatch.setenv(key, value)
        self.monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
        code = main(list(args))
        out, err = self.capsys.readouterr()
        return code, out, err

    def accounts(self) -> Accounts:
        return build_accounts(make_settings(self.state))

    def users(self) -> dict[str, dict[str, Any]]:
        code, out, _ = self("users", "list", "--json")
        assert code == 0
        return {user["name"]: user for user in json.loads(out)}

    def config_with_models(self) -> str:
        """A configuration file with tests.conftest.FAKE_MODELS; its path."""
        lines = ["unload_timeout_seconds = 3"]
        for model in FAKE_MODELS:
            lines.append("[[models]]")
            lines.extend(f"{key} = {json.dumps(value)}" for key, value in model.items())
        config = self.tmp_path / "gpuwarden.toml"
        config.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return str(config)


@pytest.fixture
def cli(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Cli:
    return Cli(tmp_path, capsys, monkeypatch)


def db_bytes(state: Path) -> bytes:
    """The state database with its journal files, as they lie on disk."""
    files = sorted(state.glob("gpuwarden.db*"))
    assert state / "gpuwarden.db" in files
    return b"".join(path.read_bytes() for path in files)


# ----------------------------------------------------------------------------- users add / list


def test_users_add_and_list(cli: Cli) -> None:
    assert cli("users", "list") == (0, "no accounts (add one with: gpuwarden users add NAME --admin)\n", "")
    assert cli("users", "add", "alice", "--admin", "--password-stdin", stdin=PASSWORD + "\n") == (
        0, "added alice (admin)\n", "")
    assert cli("users", "add", "bob", "--password-stdin", stdin="bob password\r\n") == (0, "added bob\n", "")
    code, out, err = cli("users", "list")
    assert code == 0 and err == ""
    header, *rows = out.splitlines()
    assert header.split() == ["User", "Role", "Tokens", "Created"]
    assert [row.split()[:3] for row in rows] == [["alice", "admin", "0"], ["bob", "user", "0"]]
    assert all(re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d UTC$", row) for row in rows)
    code, out, _ = cli("users", "list", "--json")
    listed = json.loads(out)
    assert code == 0 and [(u["name"], u["admin"], u["tokens"]) for u in listed] == [
        ("alice", True, 0), ("bob", False, 0)]
    assert all("password" not in key for user in listed for key in user)
    # The password is the line without its line ending (\n or \r\n), and it is what signs in.
    accounts = cli.accounts()
    assert accounts.login("alice", PASSWORD, "test").user.admin is True
    assert accounts.login("bob", "bob password", "test").user.name == "bob"
    with pytest.raises(NotAuthenticated):
        accounts.login("bob", "bob password\r", "test")


def test_users_add_refusals(cli: Cli) -> None:
    assert cli("users", "add", "alice", "--admin", "--password-stdin", stdin=PASSWORD)[0] == 0
    code, out, err = cli("users", "add", "alice", "--password-stdin", stdin="another password\n")
    assert (code, out) == (1, "")
    assert err == "gpuwarden: user alice already exists (change the password with `gpuwarden users passwd alice`)\n"
    code, out, err = cli("users", "add", "carol", "--password-stdin", stdin="1234567\n")
    assert (code, out, err) == (1, "", "gpuwarden: a password needs at least 8 characters\n")
    for name in ("../x", "a b", ".hidden", "x" * 65, ""):
        code, out, err = cli("users", "add", name, "--password-stdin", stdin=PASSWORD + "\n")
        assert (code, out) == (1, ""), name
        assert err.startswith(f"gpuwarden: invalid user name {name!r}: 1 to 64 letters") and err.count("\n") == 1
    code, out, err = cli("users", "add", "dave", stdin=PASSWORD + "\n")  # stdin is no terminal
    assert (code, out) == (2, "")
    assert "--password-stdin" in err and "no terminal" in err
    assert list(cli.users()) == ["alice"]  # nothing refused was added, alice stays as she was
    assert cli.users()["alice"]["admin"] is True


# ----------------------------------------------------------------------------- tokens, passwords, removal


def test_token_is_shown_once_and_stored_only_as_its_digest(cli: Cli) -> None:
    cli("users", "add", "alice", "--admin", "--password-stdin", stdin=PASSWORD)
    cli("users", "add", "bob", "--password-stdin", stdin="bob password")
    code, out, err = cli("users", "token", "bob")
    assert code == 0 and err == "" and out.count("\n") == 1
    token = out.strip()
    assert re.fullmatch(r"gwt_[A-Za-z0-9_-]{43}", token)
    stored = db_bytes(cli.state)
    assert token.encode() not in stored and token[4:].encode() not in stored
    assert token_digest(token).encode() in stored  # the check above looks where the token would be
    listed = cli("users", "list", "--json")[1] + cli("users", "list")[1] + cli("audit", "--json")[1]
    assert token not in listed and token[4:] not in listed  # shown once: nothing prints it again
    assert cli.users()["bob"]["tokens"] == 1
    actor = cli.accounts().token_actor(token, "test")
    assert actor is not None and (actor.name, actor.admin) == ("bob", False)
    second = cli("users", "token", "bob")[1].strip()
    assert second != token and cli.users()["bob"]["tokens"] == 2
    assert cli("users", "token", "bob", "--revoke") == (0, "revoked 2 token(s) of bob\n", "")
    assert cli.accounts().token_actor(token, "test") is None and cli.users()["bob"]["tokens"] == 0
    assert cli("users", "token", "bob", "--revoke") == (0, "revoked 0 token(s) of bob\n", "")
    assert cli("users", "token", "nobody") == (1, "", "gpuwarden: no user 'nobody'\n")


def test_one_token_revoked(cli: Cli) -> None:
    cli("users", "add", "bob", "--admin", "--password-stdin", stdin=PASSWORD)
    token = cli("users", "token", "bob")[1].strip()
    assert token.startswith("gwt_")
    assert cli("users", "token", "bob", "--revoke") == (0, "revoked 1 token(s) of bob\n", "")
    assert cli.accounts().token_actor(token, "test") is None


def test_passwd_and_remove(cli: Cli) -> None:
    cli("users", "add", "alice", "--admin", "--password-stdin", stdin=PASSWORD)
    cli("users", "add", "bob", "--password-stdin", stdin="bob password")
    accounts = cli.accounts()
    session = accounts.login("bob", "bob password", "test").session_id
    assert accounts.session_actor(session, "test") is not None
    assert cli("users", "passwd", "bob", "--password-stdin", stdin="new bob password\n") == (
        0, "password of bob changed; its sessions ended\n", "")
    assert accounts.session_actor(session, "test") is None
    assert accounts.login("bob", "new bob password", "test").user.name == "bob"
    with pytest.raises(NotAuthenticated):
        accounts.login("bob", "bob password", "test")
    assert cli("users", "passwd", "bob", "--password-stdin", stdin="short\n") == (
        1, "", "gpuwarden: a password needs at least 8 characters\n")
    assert cli("users", "passwd", "nobody", "--password-stdin", stdin=PASSWORD) == (
        1, "", "gpuwarden: no user 'nobody'\n")
    assert cli("users", "passwd", "bob")[0] == 2  # no terminal, no --password-stdin
    # The last admin stays while another account exists.
    code, out, err = cli("users", "remove", "alice")
    assert (code, out, err) == (1, "", "gpuwarden: alice is the last admin: make another admin first\n")
    assert list(cli.users()) == ["alice", "bob"]
    token = cli("users", "token", "bob")[1].strip()
    assert cli("users", "remove", "bob") == (0, "removed bob\n", "")
    assert list(cli.users()) == ["alice"]
    assert cli.accounts().token_actor(token, "test") is None  # his tokens went with him
    assert cli("users", "remove", "bob") == (1, "", "gpuwarden: no user 'bob'\n")
    assert cli("users", "remove", "alice") == (0, "removed alice\n", "")  # the only account: allowed
    assert cli.users() == {}


# ----------------------------------------------------------------------------- the audit trail


def test_audit_names_the_os_account_never_the_environment(cli: Cli, fake_smi: FakeSmi) -> None:
    me = os_account()
    assert me and me != "mallory"
    liar = {"USER": "mallory", "LOGNAME": "mallory", "USERNAME": "mallory"}
    config = cli.config_with_models()
    assert cli("audit", env=liar) == (0, "no audit entries yet\n", "")
    cli("users", "add", "alice", "--admin", "--password-stdin", stdin=PASSWORD)
    cli("users", "add", "bob", "--password-stdin", stdin="bob password")
    cli("users", "token", "bob")
    cli("users", "token", "bob", "--revoke")
    cli("users", "passwd", "bob", "--password-stdin", stdin="new bob password")
    code, out, err = cli("--config", config, "load", "alpha", "--gpus", "0")
    assert code == 0 and out.startswith("loaded alpha on GPU 0"), err
    try:
        [view] = [m for m in json.loads(cli("--config", config, "models", "--json")[1]) if m["name"] == "alpha"]
        assert view["owner"] == me and view["gpus"] == [0]
    finally:
        assert cli("--config", config, "unload", "alpha") == (0, "unloaded alpha\n", "")
    cli("users", "remove", "bob")
    code, out, _ = cli("audit", "--json")
    entries = json.loads(out)
    assert code == 0
    assert [e["action"] for e in entries] == ["user-remove", "unload", "load", "user-password", "token-revoke",
                                              "token-create", "user-add", "user-add"]
    assert {(e["user"], e["client"], e["result"]) for e in entries} == {(me, "cli", "ok")}
    assert [e["id"] for e in entries] == sorted((e["id"] for e in entries), reverse=True)
    assert [e["at"] for e in entries] == sorted((e["at"] for e in entries), reverse=True)
    assert [(e["model"], e["gpus"]) for e in entries[1:3]] == [("alpha", [0]), ("alpha", [0])]
    assert [e["detail"] for e in entries[4:]] == ["bob: 1 token(s)", "bob", "bob", "alice (admin)"]
    assert "mallory" not in out
    code, out, _ = cli("audit", "--limit", "3")
    header, *rows = out.splitlines()
    assert header.split()[:4] == ["Time", "(UTC)", "User", "Client"]
    assert [row.split()[2:6] for row in rows] == [[me[:16], "cli", "user-remove", "ok"],
                                                  [me[:16], "cli", "unload", "ok"],
                                                  [me[:16], "cli", "load", "ok"]]
    assert "mallory" not in out


# ----------------------------------------------------------------------------- serve


@pytest.fixture
def uvicorn_calls(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """uvicorn.run (gpuwarden.web.server calls it as ``uvicorn.run``) records its call instead of serving."""
    import uvicorn

    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: calls.append({"app": app, **options}))
    return calls


def test_serve_refuses_to_listen_unprotected(cli: Cli, uvicorn_calls: list[dict[str, Any]]) -> None:
    mock = {"GPUWARDEN_MOCK_SMI_TEXT": "0, 1 MiB\n"}
    code, out, err = cli("serve", "--host", "0.0.0.0", env=mock)
    assert code == 2 and "dashboard on" not in out
    assert "refusing to listen on 0.0.0.0" in err and "gpuwarden users add" in err
    code, out, err = cli("serve", env={**mock, "GPUWARDEN_AUTH": "password"})
    assert code == 2 and "no admin account exists" in err and "gpuwarden users add NAME --admin" in err
    cli("users", "add", "bob", "--password-stdin", stdin="bob password")  # an account, but no admin
    code, out, err = cli("serve", "--host", "0.0.0.0", env={**mock, "GPUWARDEN_AUTH": "password"})
    assert code == 2 and "no admin account exists" in err
    assert uvicorn_calls == []
    cli("users", "add", "alice", "--admin", "--password-stdin", stdin=PASSWORD)
    code, out, err = cli("serve", "--host", "0.0.0.0", "--port", "8765",
                         env={**mock, "GPUWARDEN_AUTH": "password"})
    assert code == 0, err
    assert [(c["host"], c["port"]) for c in uvicorn_calls] == [("0.0.0.0", 8765)]
    assert "every account on this machine" not in out and "open http://0.0.0.0:8765/ in a browser" in out


def test_serve_on_loopback_without_accounts_says_everyone_can_act(cli: Cli,
                                                                  uvicorn_calls: list[dict[str, Any]]) -> None:
    code, out, err = cli("serve", "--port", "8766", env={"GPUWARDEN_MOCK_SMI_TEXT": "0, 1 MiB\n"})
    assert code == 0, err
    notice, dashboard = out.splitlines()
    assert notice.startswith("gpuwarden: auth = \"none\": every account on this machine can load and unload "
                             "every model")
    assert "gpuwarden users add NAME --admin" in notice
    assert dashboard.startswith("gpuwarden: open http://127.0.0.1:8766/ in a browser") and "Ctrl+C" in dashboard
    [call] = uvicorn_calls
    assert (call["host"], call["port"]) == ("127.0.0.1", 8766) and call["app"] is not None


# ----------------------------------------------------------------------------- hostile process names


def assert_one_clean_line(text: str) -> None:
    assert text.endswith("\n") and text.count("\n") == 1, repr(text)
    assert not CONTROL.search(text[:-1]), repr(text)


def assert_no_control_characters(text: str) -> None:
    assert text.endswith("\n")
    for line in text[:-1].split("\n"):
        assert not CONTROL.search(line), repr(line)


def test_a_hostile_process_name_reaches_the_terminal_cleaned(cli: Cli, fake_smi: FakeSmi) -> None:
    """A live foreign process on GPU 0, read through the fake nvidia-smi (XML)."""
    config = cli.config_with_models()
    fake_smi.add_foreign("0", mib=400, name=HOSTILE)
    code, out, err = cli("--config", config, "load", "alpha", "--gpus", "0")
    assert (code, out) == (1, "")
    assert err.startswith("gpuwarden: refused: GPU 0 is occupied by someone else")
    assert "ZXZpbA==" in err and "?31m?rm -rf" in err  # the name is there, its C1 CSI and newline are not
    assert_one_clean_line(err)
    code, out, _ = cli("audit")
    assert code == 0 and "refused" in out and "ZXZpbA==" in out
    assert_no_control_characters(out)
    code, out, _ = cli("--config", config, "status")
    assert "ZXZpbA==" in out
    assert_no_control_characters(out)


def test_raw_escape_sequences_from_recorded_output_are_cleaned(cli: Cli, tmp_path: Path) -> None:
    """ESC and BEL reach the CLI unchanged from a recorded CSV (XML input turns them into U+FFFD)."""
    name = HOSTILE.split("\n")[0]
    gpus, apps = tmp_path / "gpus.csv", tmp_path / "apps.csv"
    gpus.write_text("index, uuid, memory.used [MiB], memory.total [MiB]\n0, GPU-x, 500 MiB, 1000 MiB\n"
                    "1, GPU-y, 1 MiB, 1000 MiB\n", encoding="utf-8")
    apps.write_text(f"gpu_uuid, pid, process_name, used_memory [MiB]\nGPU-x, 4242, {name}, 490 MiB\n",
                    encoding="utf-8")
    env = {"GPUWARDEN_MOCK_SMI": os.pathsep.join([str(gpus), str(apps)])}
    code, out, _ = cli("status", "--json", env=env)
    [process] = json.loads(out)["gpu_status"][0]["process_info"]
    assert process["process_name"] == name  # the raw name did come through the parser
    code, out, err = cli("--config", cli.config_with_models(), "load", "alpha", "--gpus", "0", env=env)
    assert (code, out) == (1, "")
    assert "?]52;c;ZXZpbA==??[2J?31m" in err
    assert_one_clean_line(err)
    code, out, _ = cli("audit", env=env)
    assert code == 0 and "?]52;c;ZXZpbA==??[2J?31m" in out
    assert_no_control_characters(out)
