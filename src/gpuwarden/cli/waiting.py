"""``gpuwarden load --wait`` and ``gpuwarden queue``: waiting in line for busy GPUs from the terminal.

The CLI reads the GPUs itself while it waits and starts its own request when its turn comes, so
waiting works with or without a running server; with one, both try, and the state database lets
exactly one of them start it. It never starts someone else's request (that model would run as this
OS account): those are the server's. Ctrl+C withdraws the request.
"""

from __future__ import annotations

import time

import click

from gpuwarden.cli.common import EXIT_FAILED, cli_actor, controller_for, fail
from gpuwarden.controller import Controller
from gpuwarden.errors import ControllerError
from gpuwarden.present import duration_label, terminal_safe
from gpuwarden.probe.shared import Freshness
from gpuwarden.queueing import QueueLine, line_of
from gpuwarden.records import ModelState, ModelView, Selection
from gpuwarden.waitlist import WaitEntry, WaitState

POLL_SECONDS = 1.0  # how often the waiter looks at the queue (the state database)
PROBE_SECONDS = 5  # how often it reads the GPUs itself (more often if refresh_interval_seconds is shorter)


def pause(seconds: float) -> None:
    """Between two looks at the queue (tests replace it)."""
    time.sleep(seconds)


def load_and_wait(ctx: click.Context, controller: Controller, model: str, selection: Selection | None,
                  wait_seconds: int) -> ModelView:
    """Load ``model``, or wait in line for its GPUs; then wait until it runs. Exits 1 if it expires,
    is withdrawn, fails to start, or the model fails."""
    try:
        outcome = controller.load_or_wait(model, selection, actor=cli_actor(), wait_seconds=wait_seconds)
    except ControllerError as error:
        fail(ctx, error)
    if isinstance(outcome, WaitEntry):
        click.echo(f"GPU {outcome.gpus_label} busy: waiting in the queue as request {outcome.id} (for up to"
                   f" {duration_label(wait_seconds)}); Ctrl+C withdraws it")
        entry = _wait_in_line(ctx, controller, outcome)
        if entry.state is not WaitState.STARTED:
            fail(ctx, f"request {entry.id} {entry.state.value}: {entry.detail or 'no reason recorded'}")
        click.echo(f"GPU {entry.gpus_label} free: {model} is starting")
    return _wait_until_running(ctx, controller, model)


def _wait_in_line(ctx: click.Context, controller: Controller, entry: WaitEntry) -> WaitEntry:
    said = None
    try:
        while True:
            controller.reconcile()
            controller.snapshot(Freshness.within(min(controller.runtime.refresh_interval_seconds, PROBE_SECONDS)))
            controller.advance_queue(only=entry.id)  # others' loads are the server's (or their waiters'): a
            # model this process launched would run as this OS account
            entry = controller.queue.entry(entry.id)
            if not entry.waiting:
                return entry
            line = line_of(controller.queue_lines(), entry.id)
            if line is not None and (text := describe_line(line)) != said:
                click.echo(text)
                said = text
            pause(POLL_SECONDS)
    except KeyboardInterrupt:
        _withdraw_on_interrupt(ctx, controller, entry)
    except ControllerError as error:
        fail(ctx, f"{error} (request {entry.id} still waits: gpuwarden queue withdraw {entry.id})")
    raise AssertionError("unreachable")


def _withdraw_on_interrupt(ctx: click.Context, controller: Controller, entry: WaitEntry) -> None:
    try:
        controller.withdraw(entry.id, actor=cli_actor())
        click.echo(f"\nrequest {entry.id} withdrawn", err=True)
    except ControllerError as error:
        click.echo(f"\nrequest {entry.id}: {terminal_safe(str(error))}", err=True)
    ctx.exit(EXIT_FAILED)


def _wait_until_running(ctx: click.Context, controller: Controller, model: str) -> ModelView:
    while True:
        controller.reconcile()
        view = controller.model_view(model)
        if view is None or view.state is not ModelState.STARTING:
            break
        pause(POLL_SECONDS / 4)
    if view is None or view.state is not ModelState.RUNNING:
        state = view.state.value if view else "gone"
        fail(ctx, f"{model} did not start ({state}): {view.error if view and view.error else 'see its log'}")
    return view


def describe_line(line: QueueLine) -> str:
    """'position 1 for GPU 1 (GPU 1: occupied by someone else: ...)', cleaned for the terminal."""
    holders = "; ".join(f"GPU {index}: {holder}" for index, holder in line.held_by.items())
    return terminal_safe(f"position {line.position} for GPU {line.entry.gpus_label} ({holders})")


def format_queue(lines: list[QueueLine]) -> str:
    if not lines:
        return "no load is waiting for a GPU"
    rows = [f"{'ID':>5}  {'Model':<24} {'GPUs':<8} {'Pos':>3}  {'Owner':<16} {'Since':>19}  Until"]
    for line in lines:
        entry = line.entry
        rows.append(f"{entry.id:>5}  {terminal_safe(entry.model_name)[:24]:<24} {entry.gpus_label:<8}"
                    f" {line.position:>3}  {terminal_safe(entry.owner or '-')[:16]:<16}"
                    f" {entry.requested_at:%Y-%m-%d %H:%M:%S}  {entry.expires_at:%H:%M:%S} UTC")
        rows.extend(f"{'':>7}GPU {index}: {terminal_safe(holder)}" for index, holder in line.held_by.items())
    return "\n".join(rows)


@click.group(invoke_without_command=True)
@click.pass_context
def queue(ctx: click.Context) -> None:
    """List the loads waiting for busy GPUs (``queue withdraw ID`` takes one out)."""
    if ctx.invoked_subcommand is None:
        controller = controller_for(ctx)
        try:
            lines = controller.queue_lines()
        except ControllerError as error:
            fail(ctx, error)
        click.echo(format_queue(lines))


@queue.command()
@click.argument("request_id", type=click.IntRange(1, None))
@click.pass_context
def withdraw(ctx: click.Context, request_id: int) -> None:
    """Take the waiting load REQUEST_ID out of the queue."""
    controller = controller_for(ctx)
    try:
        entry = controller.withdraw(request_id, actor=cli_actor())
    except ControllerError as error:
        fail(ctx, error)
    click.echo(f"request {entry.id} ({terminal_safe(entry.model_name)} on GPU {entry.gpus_label}) withdrawn")
