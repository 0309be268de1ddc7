"""``gpuwarden users add | remove | list | passwd | token`` and ``gpuwarden audit``.

They act on the state database directly, as the OS account that runs them (an administrator: see
:func:`gpuwarden.cli.common.cli_actor`). Passwords are read without echo from the terminal, or as
one line from standard input with ``--password-stdin`` (scripts); never from the command line,
where other accounts could read them in the process list.
"""

from __future__ import annotations

import json
import sys

import click

from gpuwarden.accounts import Accounts, build_accounts
from gpuwarden.cli.common import EXIT_CONFIG, cli_actor, fail, settings_for
from gpuwarden.errors import ControllerError
from gpuwarden.people import AuditEntry
from gpuwarden.present import terminal_safe


def _accounts(ctx: click.Context) -> Accounts:
    return build_accounts(settings_for(ctx))


def _password(ctx: click.Context, from_stdin: bool) -> str:
    if from_stdin:
        line = sys.stdin.readline()
        password = line[:-1] if line.endswith("\n") else line
        return password.removesuffix("\r")
    if not sys.stdin.isatty():
        fail(ctx, "no terminal to ask for the password: pass it on standard input with --password-stdin",
             EXIT_CONFIG)
    return str(click.prompt("Password", hide_input=True, confirmation_prompt=True))


@click.group()
def users() -> None:
    """Accounts for auth = "password": people sign in to the dashboard or use API tokens."""


@users.command("add")
@click.argument("name")
@click.option("--admin", is_flag=True, help="May unload anyone's model, change settings and accounts.")
@click.option("--password-stdin", is_flag=True, help="Read the password as one line from standard input.")
@click.pass_context
def add_user(ctx: click.Context, name: str, admin: bool, password_stdin: bool) -> None:
    """Add the account NAME."""
    accounts = _accounts(ctx)
    password = _password(ctx, password_stdin)
    try:
        accounts.add_user(cli_actor(), name, password, admin=admin)
    except ControllerError as error:
        fail(ctx, error)
    click.echo(f"added {name}{' (admin)' if admin else ''}")


@users.command("remove")
@click.argument("name")
@click.pass_context
def remove_user(ctx: click.Context, name: str) -> None:
    """Remove the account NAME with its API tokens and sessions (its running models stay)."""
    try:
        _accounts(ctx).remove_user(cli_actor(), name)
    except ControllerError as error:
        fail(ctx, error)
    click.echo(f"removed {name}")


@users.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def list_users(ctx: click.Context, as_json: bool) -> None:
    """List the accounts."""
    try:
        accounts = _accounts(ctx).users()
    except ControllerError as error:
        fail(ctx, error)
    if as_json:
        click.echo(json.dumps([user.to_dict() for user in accounts], indent=2))
        return
    if not accounts:
        click.echo("no accounts (add one with: gpuwarden users add NAME --admin)")
        return
    click.echo(f"{'User':<24} {'Role':<6} {'Tokens':>6}  Created")
    for user in accounts:
        click.echo(f"{terminal_safe(user.name):<24} {'admin' if user.admin else 'user':<6} {user.token_count:>6}  "
                   f"{user.created_at:%Y-%m-%d %H:%M} UTC")


@users.command("passwd")
@click.argument("name")
@click.option("--password-stdin", is_flag=True, help="Read the password as one line from standard input.")
@click.pass_context
def set_password(ctx: click.Context, name: str, password_stdin: bool) -> None:
    """Set a new password for NAME; the account's dashboard sessions end."""
    accounts = _accounts(ctx)
    password = _password(ctx, password_stdin)
    try:
        accounts.set_password(cli_actor(), name, password)
    except ControllerError as error:
        fail(ctx, error)
    click.echo(f"password of {name} changed; its sessions ended")


@users.command("token")
@click.argument("name")
@click.option("--revoke", is_flag=True, help="Revoke every API token of NAME instead.")
@click.pass_context
def token(ctx: click.Context, name: str, revoke: bool) -> None:
    """Print a new API token for NAME (shown once: store it now), or revoke NAME's tokens."""
    try:
        if revoke:
            click.echo(f"revoked {_accounts(ctx).revoke_tokens(cli_actor(), name)} token(s) of {name}")
        else:
            click.echo(_accounts(ctx).new_token(cli_actor(), name))
    except ControllerError as error:
        fail(ctx, error)


def format_audit(entries: list[AuditEntry]) -> str:
    if not entries:
        return "no audit entries yet"
    lines = [f"{'Time (UTC)':<19}  {'User':<16} {'Client':<15} {'Action':<13} {'Result':<8} {'Model':<16} "
             f"{'GPUs':<6} Detail"]
    for entry in entries:
        gpus = "-" if entry.gpus is None else ",".join(map(str, entry.gpus)) or "cpu"
        when = f"{entry.at:%Y-%m-%d %H:%M:%S}" if entry.at else "?"
        lines.append(f"{when:<19}  {terminal_safe(entry.user)[:16]:<16} {terminal_safe(entry.client)[:15]:<15} "
                     f"{entry.action.value:<13} {entry.result.value:<8} {terminal_safe(entry.model)[:16]:<16} "
                     f"{gpus:<6} {terminal_safe(entry.detail)}")
    return "\n".join(lines)


@click.command()
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True, help="How many entries.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def audit(ctx: click.Context, limit: int, as_json: bool) -> None:
    """Show the audit trail, newest first: loads, unloads, refusals, crashes, settings, logins, accounts."""
    try:
        entries = _accounts(ctx).recent(limit)
    except ControllerError as error:
        fail(ctx, error)
    click.echo(json.dumps([e.to_dict() for e in entries], indent=2) if as_json else format_audit(entries))
