"""Where the server's and the CLI's snapshots come from: :func:`make_source` picks one from the
settings (mock mode when ``mock_smi`` / ``mock_smi_text`` is set, else the demo's simulated machine,
NVML if chosen, else the real nvidia-smi, :class:`SmiSource`)."""


from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from pathlib import Path

from gpuwarden.config import Settings
from gpuwarden.probe.assemble import build_snapshot, failed_snapshot
from gpuwarden.probe.base import GpuSource, utc_now
from gpuwarden.probe.counters import WindowsMemorySource
from gpuwarden.probe.demo_registry import SimulatedSource, registry_dir
from gpuwarden.probe.mock import MockSource
from gpuwarden.probe.nvml import NvmlSource
from gpuwarden.probe.parse import NvidiaSmiParseError, parse_output
from gpuwarden.probe.smi import QUERY_ARGS, NvidiaSmiFailed, NvidiaSmiNotFound, find_nvidia_smi, run_nvidia_smi
from gpuwarden.probe.users import ProcessLookup, PsutilLookup, snapshot_with_users
from gpuwarden.records import Snapshot


class SmiSource:
    """The real nvidia-smi (``-q -x``), with users from the OS."""

    def __init__(
        self,
        *,
        configured_path: Path | None,
        timeout_seconds: float,
        lookup: ProcessLookup,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self._configured_path = configured_path
        self._timeout_seconds = timeout_seconds
        self._lookup = lookup
        self._clock = clock

    @property
    def description(self) -> str:
        return "nvidia-smi"

    def snapshot(self) -> Snapshot:
        now = self._clock()
        try:
            executable = find_nvidia_smi(self._configured_path)
            result = run_nvidia_smi(executable, QUERY_ARGS, self._timeout_seconds)
        except NvidiaSmiNotFound as error:  # no driver installed: a machine without NVIDIA GPUs
            return failed_snapshot(now, self.description, str(error), no_gpu=True)
        except NvidiaSmiFailed as error:
            return failed_snapshot(now, self.description, str(error))
        text = result.stdout if result.stdout.strip() else result.stderr
        if not text.strip():
            reason = f"nvidia-smi exited with code {result.returncode} and printed nothing"
            return failed_snapshot(now, self.description, reason)
        try:
            parsed = parse_output(text)
        except NvidiaSmiParseError as error:
            detail = text.strip().splitlines()[0][:300]
            reason = (f"nvidia-smi failed (exit code {result.returncode}): {detail}" if result.returncode
                      else f"cannot read nvidia-smi output: {error}")
            return failed_snapshot(now, self.description, reason)
        snapshot = build_snapshot([parsed], now, self.description)
        if result.returncode and snapshot.gpus and not snapshot.warnings:
            stderr = result.stderr.strip().splitlines()
            note = f"nvidia-smi exited with code {result.returncode}" + (f": {stderr[0][:300]}" if stderr else "")
            snapshot = replace(snapshot, warnings=(note,))
        return snapshot_with_users(snapshot, self._lookup)


def make_source(settings: Settings, lookup: ProcessLookup | None = None,
                clock: Callable[[], datetime] = utc_now) -> GpuSource:
    """Mock mode if configured (text wins over files), else the demo's simulated machine or NVML if
    chosen, else the real nvidia-smi."""
    if settings.mock_smi_text is not None:
        return MockSource(text=settings.mock_smi_text, columns=settings.mock_columns, clock=clock)
    if settings.mock_smi is not None:
        return MockSource.from_setting(settings.mock_smi, settings.mock_columns, clock)
    lookup = lookup or PsutilLookup()
    if settings.gpu_source == "demo":
        return SimulatedSource(registry_dir(settings.state_dir), lookup, clock)
    smi = SmiSource(configured_path=settings.nvidia_smi_path, timeout_seconds=settings.nvidia_smi_timeout_seconds,
                    lookup=lookup, clock=clock)
    source: GpuSource = NvmlSource(lookup=lookup, fallback=smi, clock=clock) if settings.gpu_source == "nvml" else smi
    # Under WDDM nvidia-smi prints N/A for each process's memory; Windows' own counters have it.
    return WindowsMemorySource(source) if sys.platform == "win32" else source
