"""The command line: ``gpuwarden status | models | load | unload | serve | users | audit``
(:mod:`gpuwarden.cli.main`; accounts and the audit trail in :mod:`gpuwarden.cli.people`)."""

from gpuwarden.cli.main import cli, format_models, format_status, main

__all__ = ["cli", "format_models", "format_status", "main"]
