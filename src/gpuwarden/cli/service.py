"""``gpuwarden service install | uninstall | status``: gpuwarden started at boot (or at logon) and
restarted if it fails, by systemd on Linux and Task Scheduler on Windows (``schtasks``, nothing to
download). The service runs ``python -m gpuwarden --config FILE serve`` with this Python.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from gpuwarden.cli.common import EXIT_CONFIG, EXIT_FAILED, fail, settings_for
from gpuwarden.config import ENV_PREFIX, Settings, config_file, file_settings
from gpuwarden.present import terminal_safe
from gpuwarden.probe.users import os_account
from gpuwarden.service.plan import Platform, ServiceSpec, install_steps, status_steps, uninstall_steps
from gpuwarden.service.system import NOT_FOUND, LocalServiceSystem, StepResult, carry_out

SYSTEM_HELP = ("For the whole machine, started at boot (needs root or an administrator): under systemd as"
               " --user ACCOUNT, on Windows as LocalSystem. Default: for your account, at your logon.")


def _platform(ctx: click.Context) -> Platform:
    platform = {"win32": Platform.WINDOWS, "linux": Platform.LINUX}.get(sys.platform)
    if platform is None:
        fail(ctx, f"gpuwarden service supports Linux (systemd) and Windows (Task Scheduler), not {sys.platform}",
             EXIT_CONFIG)
    return platform


def _config_file(ctx: click.Context, system: bool) -> Path:
    """The configuration the service will read: --config, else GPUWARDEN_CONFIG, else the default
    file. It must exist (a service without one would run on defaults nobody chose), and for the whole
    machine it must name its state_dir (else the service account's default would differ from the
    CLI's, and they would not share one state database)."""
    settings_for(ctx, quiet=True)  # a bad configuration stops here, before anything is installed
    given: Path | None = ctx.obj.get("config") if ctx.obj else None
    path = config_file(given)[0].absolute()
    if not path.is_file():
        fail(ctx, f"the service needs a configuration file: {path} does not exist (pass --config FILE)",
             EXIT_CONFIG)
    if system and "state_dir" not in file_settings(path):
        fail(ctx, f"set state_dir in {path}: the service's account and your CLI must share one state database",
             EXIT_CONFIG)
    ignored = sorted(key for key in os.environ
                     if key.upper().startswith(ENV_PREFIX) and key[len(ENV_PREFIX):].lower() in Settings.model_fields)
    if ignored:
        click.echo(f"gpuwarden: warning: the service does not see {', '.join(ignored)}: put those settings in {path}",
                   err=True)
    return path


def _report(ctx: click.Context, results: list[StepResult], what: str) -> None:
    """Each step and what it said; exit 1 naming the step that failed."""
    for result in results:
        command = " ".join(result.step.argv)
        shown = f"{command}: {result.output}" if command and result.output else command or result.output
        click.echo(terminal_safe(shown))
    failed = next((r for r in results if r.code != 0 and not r.step.may_fail), None)
    if failed is not None:
        hint = ("is it installed?" if failed.code == NOT_FOUND
                else "see its message above; --system needs root or an administrator")
        fail(ctx, f"{what} failed at {' '.join(failed.step.argv) or failed.step.path} ({hint})", EXIT_FAILED)


@click.group()
def service() -> None:
    """Start gpuwarden at boot and restart it if it fails (systemd on Linux, Task Scheduler on Windows)."""


@service.command("install")
@click.option("--system", is_flag=True, help=SYSTEM_HELP)
@click.option("--user", "account", default=None, help="With --system on Linux: the account gpuwarden runs as.")
@click.pass_context
def install(ctx: click.Context, system: bool, account: str | None) -> None:
    """Install and start the service with this configuration file and this Python."""
    platform = _platform(ctx)
    if platform is Platform.LINUX and system and not account:
        fail(ctx, "--system needs --user ACCOUNT: the account gpuwarden runs as (not root: it needs no privileges)",
             EXIT_CONFIG)
    config = _config_file(ctx, system)
    if platform is Platform.WINDOWS and not system:
        account = os_account()
        if account is None:
            fail(ctx, "Windows did not tell which account this is; use --system to run as LocalSystem", EXIT_FAILED)
    try:
        spec = ServiceSpec(python=sys.executable, config=config, system=system, account=account)
    except ValueError as error:
        fail(ctx, error, EXIT_CONFIG)
    task_file = settings_for(ctx, quiet=True).state_dir / "gpuwarden-task.xml"
    _report(ctx, carry_out(LocalServiceSystem(), install_steps(spec, platform, home=Path.home(), task_file=task_file)),
            "install")
    click.echo(f"installed: gpuwarden starts {'at boot' if system else 'at your logon'} with {config}")
    if platform is Platform.LINUX and not system:
        click.echo("note: without lingering, systemd stops your user services, and the models they started, when you"
                   " log out; to keep them running and start at boot: loginctl enable-linger $(id -un)")


@service.command("uninstall")
@click.option("--system", is_flag=True, help="The service installed with --system.")
@click.pass_context
def uninstall(ctx: click.Context, system: bool) -> None:
    """Stop and remove the service. Running models keep running; the next gpuwarden adopts them."""
    _report(ctx, carry_out(LocalServiceSystem(), uninstall_steps(system, _platform(ctx), home=Path.home())),
            "uninstall")
    click.echo("uninstalled")


@service.command("status")
@click.option("--system", is_flag=True, help="The service installed with --system.")
@click.pass_context
def status(ctx: click.Context, system: bool) -> None:
    """Whether the service is installed and running (systemctl status / schtasks /Query)."""
    results = carry_out(LocalServiceSystem(), status_steps(system, _platform(ctx)))
    for result in results:
        click.echo(terminal_safe(result.output) or "(no output)")
    if any(result.code != 0 for result in results):
        ctx.exit(EXIT_FAILED)
