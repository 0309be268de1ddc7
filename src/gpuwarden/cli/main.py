"""The command line: ``gpuwarden status | models | load | unload | serve`` (``queue``, ``users``, ``audit``...).

The CLI acts itself, on the same state database as a running server (one source of truth; loads
are serialized machine-wide by the database), so it works with or without the server.
Exit codes: 0 done (CPU mode included), 1 refused or failed, 2 bad configuration or usage.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import sys
from pathlib import Path
from typing import Any, ClassVar

import click

from gpuwarden import __version__
from gpuwarden.classify import StatusDocument
from gpuwarden.cli.common import EXIT_CONFIG, EXIT_FAILED, cli_actor, controller_for, fail, settings_for
from gpuwarden.config import ConfigError
from gpuwarden.errors import ControllerError
from gpuwarden.present import duration_compact, gpu_state_label, process_role, terminal_safe
from gpuwarden.probe.shared import Freshness
from gpuwarden.probe.users import DENIED
from gpuwarden.records import GpuState, ModelView, parse_selection
from gpuwarden.runtime import RUNTIME_SETTING_RANGES
from gpuwarden.waitlist import parse_duration_seconds


def format_status(document: StatusDocument) -> str:
    lines = []
    if document.cpu_mode:
        lines.append("CPU Mode (No GPU Detected)")
        lines.append(f"  reason: {terminal_safe(document.error)}")
        lines.append("  models load onto the CPU")
        return "\n".join(lines)
    if document.unreadable:
        lines.append("GPU status unreadable: no model is loaded onto a GPU until the GPUs can be read")
        lines.append(f"  reason: {terminal_safe(document.error)}")
        age = document.reading_age_seconds
        lines.append("  last good reading: " + ("none seen by this process" if age is None else f"{age:.0f} s ago"))
        lines.append("  models can still be loaded onto the CPU explicitly (--gpus cpu)")
        if not document.gpus:
            return "\n".join(lines)
        lines.append("last known GPUs:")
    lines.append(f"Total GPUs: {document.total_gpus}   threshold: {document.threshold_mib} MiB   "
                 f"checked: {document.checked_at:%Y-%m-%d %H:%M:%S} UTC   source: {document.source}")
    for warning in document.warnings:
        lines.append(f"warning: {terminal_safe(warning)}")
    lines.append(f"{'GPU':>3}  {'Name':<26} {'Memory used / total':>21}  State")
    for gpu in document.gpus:
        used = "?" if gpu.memory_used_mib is None else f"{gpu.memory_used_mib}"
        total = "?" if gpu.memory_total_mib is None else f"{gpu.memory_total_mib}"
        label = terminal_safe(gpu_state_label(gpu, for_terminal=True))
        lines.append(f"{gpu.index:>3}  {terminal_safe(gpu.name)[:26]:<26} {used + ' / ' + total + ' MiB':>21}  {label}")
        for process in gpu.process_info:
            memory = "N/A" if process.used_memory_mib is None else f"{process.used_memory_mib} MiB"
            owner = process_role(process.model_name, process.desktop)
            lines.append(f"       PID {process.pid:<8} {terminal_safe(process.process_name)[:48]:<48} "
                         f"{terminal_safe(process.user):<16} {memory:>10}  {process.type or '-':<4} {owner}")
        if gpu.state is GpuState.OCCUPIED_BY_OTHERS and not gpu.process_info:
            lines.append("       (no process listed: another container, user or vGPU guest holds the memory)")
    if any(p.user_unknown == DENIED for gpu in document.gpus for p in gpu.process_info):
        lines.append(f"note: users shown as '-' are unknown: {DENIED}")
    if document.unassigned_processes:
        lines.append("processes on GPUs not listed above:")
        for process in document.unassigned_processes:
            lines.append(f"       PID {process.pid:<8} {terminal_safe(process.process_name)}")
    return "\n".join(lines)


def format_models(models: list[ModelView]) -> str:
    if not models:
        return "no models configured (add [[models]] entries to the configuration file)"
    lines = [f"{'Model':<24} {'State':<11} {'GPUs':<8} {'PID':>8}  {'Uptime':>9}  Detail"]
    for view in models:
        gpus = ",".join(map(str, view.gpu_indexes)) if view.gpu_indexes else ("cpu" if view.loaded else "-")
        uptime = "-" if view.uptime_seconds is None else duration_compact(view.uptime_seconds)
        detail = view.error or (f"owner {view.owner}" if view.loaded and view.owner else "")
        pid = view.model_pid or view.pid or "-"  # the model's own process where its launcher recorded it
        lines.append(f"{terminal_safe(view.name):<24} {view.state.value:<11} {gpus:<8} {pid:>8}  "
                     f"{uptime:>9}  {terminal_safe(detail)}")
    return "\n".join(lines)


class LazyGroup(click.Group):
    """A group whose rarer commands (accounts, the audit trail, the service) are imported only when
    named: ``gpuwarden status`` does not pay for them."""

    LAZY: ClassVar[dict[str, str]] = {"users": "gpuwarden.cli.people", "audit": "gpuwarden.cli.people",
                                      "service": "gpuwarden.cli.service", "queue": "gpuwarden.cli.waiting"}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *self.LAZY])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.LAZY:
            command = getattr(importlib.import_module(self.LAZY[cmd_name]), cmd_name)
            assert isinstance(command, click.Command)
            return command
        return super().get_command(ctx, cmd_name)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="TOML configuration file (default: GPUWARDEN_CONFIG, then the per-user location).")
@click.option("--demo", is_flag=True, help="Act on the built-in demo (the machine and models of `serve --demo`).")
@click.version_option(__version__, prog_name="gpuwarden")
@click.pass_context
def cli(ctx: click.Context, config: Path | None, demo: bool) -> None:
    """gpuwarden: load models only onto GPUs nobody else is using."""
    ctx.ensure_object(dict)
    ctx.obj["config"] = config
    ctx.obj["demo"] = demo


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print the status document as JSON.")
@click.option("--threshold", type=click.IntRange(*RUNTIME_SETTING_RANGES["memory_threshold_mib"]), default=None,
              help="Memory threshold in MiB for this call (default: the configured one).")
@click.pass_context
def status(ctx: click.Context, as_json: bool, threshold: int | None) -> None:
    """Show every GPU: idle, model loaded, or occupied by someone else."""
    document = controller_for(ctx).status(Freshness.NOW, threshold_mib=threshold)
    if as_json:
        click.echo(json.dumps(document.to_dict(), indent=2))
    else:
        click.echo(format_status(document))
    if document.unreadable:
        ctx.exit(EXIT_FAILED)  # the GPUs could not be read: not "done"


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def models(ctx: click.Context, as_json: bool) -> None:
    """List the configured models with their state, GPUs, PID and uptime."""
    controller = controller_for(ctx)
    try:
        views = controller.models()
    except ControllerError as error:
        fail(ctx, error)
    if as_json:
        click.echo(json.dumps([view.to_dict() for view in views], indent=2))
    else:
        click.echo(format_models(views))


@cli.command()
@click.argument("model")
@click.option("--gpus", default=None, help="GPU indexes such as '0' or '0,1', or 'cpu' (default: the first idle GPUs).")
@click.option("--wait", is_flag=True, help="If the GPUs are busy, wait in the queue for them, then until the model"
              " runs (Ctrl+C withdraws the request).")
@click.option("--timeout", "timeout", default=None, metavar="DURATION",
              help="With --wait: give up after this long (3600, 90s, 30m, 1h, 1h30m; default: wait_timeout_minutes).")
@click.pass_context
def load(ctx: click.Context, model: str, gpus: str | None, wait: bool, timeout: str | None) -> None:
    """Load MODEL onto idle GPUs (re-checked right before the load), or with --wait wait for busy ones."""
    if timeout is not None and not wait:
        raise click.UsageError("--timeout is for --wait")
    try:
        wait_seconds = parse_duration_seconds(timeout) if timeout is not None else None
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--timeout") from None
    controller = controller_for(ctx)
    try:
        controller.model_spec(model)  # an unknown model is reported before a bad selection
        selection = parse_selection(gpus) if gpus is not None else None
        if wait:
            from gpuwarden.cli.waiting import load_and_wait

            view = load_and_wait(ctx, controller, model, selection,
                                 wait_seconds or controller.settings.wait_timeout_seconds)
        else:
            view = controller.load(model, selection, actor=cli_actor())
    except ControllerError as error:
        fail(ctx, error)
    where = ",".join(map(str, view.gpu_indexes)) if view.gpu_indexes else "cpu"
    click.echo(f"loaded {view.name} on GPU {where} (launcher pid {view.pid}, {view.state}); log: {view.log_path}")


@cli.command()
@click.argument("model")
@click.pass_context
def unload(ctx: click.Context, model: str) -> None:
    """Stop MODEL (its whole process tree) and free its GPUs."""
    controller = controller_for(ctx)
    try:
        view = controller.unload(model, actor=cli_actor())
    except ControllerError as error:
        fail(ctx, error)
    click.echo(f"unloaded {view.name}")


@cli.command()
@click.option("--host", default=None, help="Address to listen on (default 127.0.0.1).")
@click.option("--port", type=click.IntRange(1, 65535), default=None, help="Port (default 8000).")
@click.option("--demo", is_flag=True, help="Run on built-in demo data: two mock GPUs and harmless demo models.")
@click.pass_context
def serve(ctx: click.Context, host: str | None, port: int | None, demo: bool) -> None:
    """Run the web dashboard and REST API."""
    from gpuwarden.web.server import run_server

    overrides: dict[str, Any] = {}
    if host is not None:
        overrides["host"] = host
    if port is not None:
        overrides["port"] = port
    if demo:  # the demo keeps its state in a folder of its own inside the configured state_dir
        ctx.obj["demo"] = True
    settings = settings_for(ctx, overrides)
    try:
        run_server(settings)
    except ConfigError as error:
        fail(ctx, error, EXIT_CONFIG)


def tolerant_output() -> None:
    """Output redirected to a file or pipe is encoded in the ANSI code page on Windows (cp1252): a
    process name outside it is written with a replacement character, never a crash."""
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            with contextlib.suppress(ValueError, OSError, TypeError):
                reconfigure(errors="replace")


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code (testable in process)."""
    tolerant_output()
    try:
        result = cli.main(args=argv, prog_name="gpuwarden", standalone_mode=False)
    except click.exceptions.Exit as exit_:
        return int(exit_.exit_code)
    except click.ClickException as error:
        error.show()
        return EXIT_CONFIG
    except click.exceptions.Abort:
        return EXIT_FAILED
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
