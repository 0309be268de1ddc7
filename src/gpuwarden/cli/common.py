"""What every command shares: settings read once at the edge, the exit codes, how errors are
printed (cleaned of control characters), and who the CLI acts as."""

from __future__ import annotations

from pathlib import Path
from typing import Any, NoReturn

import click

from gpuwarden.config import ConfigError, Settings, load_settings
from gpuwarden.controller import Controller, build_controller
from gpuwarden.people import Actor, Channel
from gpuwarden.present import terminal_safe
from gpuwarden.probe.users import os_account

EXIT_FAILED = 1
EXIT_CONFIG = 2


def settings_for(ctx: click.Context, overrides: dict[str, Any] | None = None, *, quiet: bool = False) -> Settings:
    """The settings, read once; with ``--demo``, the demo's (its own state directory inside the
    configured one, the simulated machine, the demo models)."""
    config: Path | None = ctx.obj.get("config") if ctx.obj else None
    try:
        if ctx.obj and ctx.obj.get("demo"):
            from gpuwarden.demo import demo_overrides  # the demo's machine: only for --demo

            overrides = {**(overrides or {}), **demo_overrides(load_settings(config, overrides=overrides).state_dir)}
        settings = load_settings(config, overrides=overrides)
    except ConfigError as error:
        click.echo(f"gpuwarden: configuration error: {terminal_safe(str(error))}", err=True)
        ctx.exit(EXIT_CONFIG)
        raise AssertionError("unreachable") from None
    for note in () if quiet else settings.notes:
        click.echo(f"gpuwarden: warning: {terminal_safe(note)}", err=True)
    return settings


def fail(ctx: click.Context, error: Exception | str, code: int = 1) -> NoReturn:
    """Print why (text from nvidia-smi, processes and people cleaned for the terminal) and exit."""
    click.echo(f"gpuwarden: {terminal_safe(str(error))}", err=True)
    ctx.exit(code)
    raise AssertionError("unreachable")


def cli_actor() -> Actor:
    """The CLI acts as the OS account running it, read from the OS. It works on the state database
    itself, so whoever may write that database is an administrator (README, Security)."""
    return Actor(os_account(), admin=True, channel=Channel.CLI, client="cli")


def controller_for(ctx: click.Context, overrides: dict[str, Any] | None = None) -> Controller:
    controller = build_controller(settings_for(ctx, overrides))
    controller.reconcile()
    return controller


