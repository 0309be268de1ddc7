"""Benchmarks: parser speed on recorded outputs, classification, and how the shared refresh keeps
nvidia-smi runs down when many dashboards poll at once. Prints a Markdown table (see README).

    .venv/bin/python bench/bench_probe.py
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from gpuwarden.classify import classify  # noqa: E402
from gpuwarden.config import load_settings  # noqa: E402
from gpuwarden.controller import Controller  # noqa: E402
from gpuwarden.probe.assemble import build_snapshot  # noqa: E402
from gpuwarden.probe.mock import MockSource  # noqa: E402
from gpuwarden.probe.parse import parse_output  # noqa: E402
from gpuwarden.probe.shared import Freshness  # noqa: E402
from gpuwarden.process.host import LocalProcessHost  # noqa: E402
from gpuwarden.records import Snapshot  # noqa: E402
from gpuwarden.store import Store  # noqa: E402

FIXTURES = ROOT / "tests" / "fixtures" / "nvidia-smi"
TITAN_COLUMNS = ("index", "uuid", "name", "temperature.gpu", "utilization.gpu", "memory.used", "memory.total")
NVIDIA_SMI_SECONDS = 0.116  # measured: `nvidia-smi -q -x` on an H200 (tests/fixtures/.../README.md)


def median_ms(action: Callable[[], object], repeat: int = 300) -> float:
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        action()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples) * 1000


class SlowSource:
    """A mock source that takes as long as the real nvidia-smi."""

    def __init__(self) -> None:
        text = (FIXTURES / "public" / "013-v100s-x8-535.171.04-one-busy.txt").read_text()
        self.inner = MockSource(text=text, clock=lambda: datetime.now(UTC))
        self.runs = 0

    @property
    def description(self) -> str:
        return "slow mock"

    def snapshot(self) -> Snapshot:
        self.runs += 1
        time.sleep(NVIDIA_SMI_SECONDS)
        return self.inner.snapshot()


def concurrent_refresh(clients: int) -> tuple[int, float]:
    with tempfile.TemporaryDirectory() as state:
        settings = load_settings(environ={}, overrides={"state_dir": state})
        source = SlowSource()
        controller = Controller(settings, source, Store(Path(state) / "g.db"), LocalProcessHost(Path(state) / "logs"))
        barrier = threading.Barrier(clients)

        def poll() -> None:
            barrier.wait()
            controller.status(Freshness.NOW)

        threads = [threading.Thread(target=poll) for _ in range(clients)]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return source.runs, (time.perf_counter() - started) * 1000


def main() -> None:
    rows = []
    for label, path in [
        ("parse table, 8 GPUs (535)", FIXTURES / "public" / "013-v100s-x8-535.171.04-one-busy.txt"),
        ("parse table, Windows 17 C+G processes", FIXTURES / "public" / "017-rtx3080-576.80-windows-cg.txt"),
        ("parse `-q -x` XML, H200 busy (17 KB)", FIXTURES / "h200-driver-580" / "busy_xml.txt"),
        ("parse `--query-gpu` CSV, 8 GPUs", FIXTURES / "public" / "032-csv-gpu-titanx-x8-noheader-nounits.txt"),
    ]:
        text = path.read_text()
        rows.append((label, f"{median_ms(lambda t=text: parse_output(t, TITAN_COLUMNS)):.3f} ms", "median of 300"))
    parsed = parse_output((FIXTURES / "public" / "002-p100x4-384.145-busy.txt").read_text())
    snapshot = build_snapshot([parsed], datetime.now(UTC), "bench")
    rows.append(("classify 4 GPUs, 16 processes", f"{median_ms(lambda: classify(snapshot, 30)):.3f} ms",
                 "median of 300"))
    for clients in (1, 20, 100):
        runs, wall = concurrent_refresh(clients)
        rows.append((f"{clients} concurrent `?refresh=true` readers", f"{runs} nvidia-smi run(s), {wall:.0f} ms",
                     f"each run {NVIDIA_SMI_SECONDS * 1000:.0f} ms (H200 measurement)"))
    print("| measurement | result | note |\n| --- | --- | --- |")
    for label, result, note in rows:
        print(f"| {label} | {result} | {note} |")


if __name__ == "__main__":
    main()
