"""Benchmark: what the queue costs the server. The monitor runs ``Controller.advance_queue`` after
every pass (once a second): with nobody waiting, and with 20 loads waiting for busy GPUs (none can
start, so each first in line is looked at). Real state database, recorded GPUs, the fake process
host. Prints a Markdown table (see README, Benchmarks).

    .venv/bin/python bench/bench_queue.py
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from gpuwarden.config import load_settings  # noqa: E402
from gpuwarden.controller import Controller  # noqa: E402
from gpuwarden.people import Actor, Channel  # noqa: E402
from gpuwarden.probe.base import utc_now  # noqa: E402
from gpuwarden.probe.mock import MockSource  # noqa: E402
from gpuwarden.process.fake import FakeProcessHost  # noqa: E402
from gpuwarden.records import Selection  # noqa: E402
from gpuwarden.store import Store  # noqa: E402

THREE_BUSY_GPUS = "0, 20000 MiB, 24564 MiB\n1, 20000 MiB, 24564 MiB\n2, 20000 MiB, 24564 MiB\n"
PASSES = 500
RUNS = 3


def pass_ms(waiting: int) -> float:
    """Milliseconds per queue pass with ``waiting`` loads in line (mean of PASSES, after a warm-up)."""
    with tempfile.TemporaryDirectory() as state:
        models = [{"name": f"m{i}", "command": ["server"]} for i in range(max(waiting, 1))]
        settings = load_settings(None, environ={}, overrides={"state_dir": state, "models": models})
        source = MockSource(text=THREE_BUSY_GPUS, columns=("index", "memory.used", "memory.total"), clock=utc_now)
        store = Store(Path(state) / "gpuwarden.db")
        controller = Controller(settings, source, store, FakeProcessHost(Path(state) / "logs"))
        someone = Actor("alice", admin=False, channel=Channel.CLI)
        for i in range(waiting):
            controller.load_or_wait(f"m{i}", Selection.gpus(i % 3), actor=someone, wait_seconds=3600)
        for _ in range(50):
            controller.advance_queue()
        started = time.perf_counter()
        for _ in range(PASSES):
            controller.advance_queue()
        elapsed = time.perf_counter() - started
        store.close()
    return elapsed / PASSES * 1000


def main() -> None:
    print("| queue pass (monitor, once a second) | median of 3 runs | min - max |")
    print("| --- | --- | --- |")
    for waiting in (0, 20):
        runs = [pass_ms(waiting) for _ in range(RUNS)]
        print(f"| {waiting} loads waiting | {statistics.median(runs):.3f} ms | {min(runs):.3f} - {max(runs):.3f} ms |")


if __name__ == "__main__":
    main()
