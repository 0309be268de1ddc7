"""Web and CLI benchmark (issue #13): every figure of the README's performance table, each beside
the limit or the naive approach it replaces, min/median/max of 3 runs.

    .venv/bin/python bench/bench_web.py [--runs 3] [--seconds 5] [--install-size]

The server (``gpuwarden serve``, 8 GPUs from the fake nvidia-smi, 20 models) is pinned to core 0
and this load generator to core 1 where the OS allows it (Linux), as the figures in the README
were taken. The limit is a bare Starlette app serving the very same bytes on the same uvicorn.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_stack import Stack, install_size_mib, start_stack  # noqa: E402
from loadgen import LoadResult, hammer, one_each, read_response, request_bytes  # noqa: E402

HOST = "127.0.0.1"
SERVER_CORE, CLIENT_CORE = 0, 1
DASHBOARDS = 200


def spread(values: list[float], unit: str = "", digits: int = 0) -> str:
    """min / median / max."""
    fmt = f"{{:,.{digits}f}}"
    return " / ".join(fmt.format(v) for v in (min(values), statistics.median(values), max(values))) + unit


def runs_of(count: int, measure: Callable[[], float]) -> list[float]:
    return [measure() for _ in range(count)]


def measure(port: int, path: str, seconds: float) -> LoadResult:
    result: LoadResult = asyncio.run(hammer(HOST, port, path, connections=10, seconds=seconds))
    assert result.errors == 0, f"{result.errors} errors on {path}"
    return result


def metric(port: int, name: str, labels: str = "") -> float:
    """A value from gpuwarden's /metrics."""
    with urllib.request.urlopen(f"http://{HOST}:{port}/metrics", timeout=10) as response:
        text = response.read().decode("utf-8")
    pattern = re.compile(rf"^{re.escape(name)}{re.escape(labels)} ([0-9.e+]+)$", re.MULTILINE)
    found = pattern.search(text)
    return float(found.group(1)) if found else 0.0


async def fan_out(port: int, dashboards: int) -> tuple[float, float, float]:
    """Open ``dashboards`` event streams (each with the keep-alive connection a browser fetches on),
    idle for 10 s (the server's CPU share over it), then make one change: the seconds until every
    dashboard has its new fragment, and the CPU share."""
    streams = [await asyncio.open_connection(HOST, port) for _ in range(dashboards)]
    for _, writer in streams:
        writer.write(request_bytes("/events", HOST, port))
    for reader, _ in streams:
        await reader.readuntil(b"retry: 2000\n\n")
    server = psutil.Process(int(Path(os.environ["GW_BENCH_PID_FILE"]).read_text()))
    before = server.cpu_times()
    await asyncio.sleep(float(os.environ.get("GW_BENCH_IDLE", "10")))
    after = server.cpu_times()
    idle_share = (after.user + after.system - before.user - before.system) / 10

    fragment = request_bytes("/dashboard/refresh?probe=false", HOST, port)
    fetchers = [await asyncio.open_connection(HOST, port) for _ in range(dashboards)]
    for reader, writer in fetchers:  # a browser keeps the connection it fetched the content on
        writer.write(fragment)
        assert (await read_response(reader))[0] == 200
    for reader, _ in streams:  # events of earlier changes are not this change's
        while True:
            try:
                if not await asyncio.wait_for(reader.read(65536), 0.001):
                    raise RuntimeError("the server closed an event stream")
            except TimeoutError:
                break

    async def follow(reader: asyncio.StreamReader, fetcher: tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> None:
        await reader.readuntil(b"event: update")
        fetcher[1].write(fragment)
        status, _ = await read_response(fetcher[0])
        assert status == 200

    waiting = [asyncio.ensure_future(follow(reader, fetcher)) for (reader, _), fetcher in
               zip(streams, fetchers, strict=True)]
    change = changed_threshold(port)
    renders_before = dashboard_renders(port)
    started = time.perf_counter()
    await asyncio.get_running_loop().run_in_executor(None, change)
    await asyncio.gather(*waiting)
    seconds = time.perf_counter() - started
    renders = dashboard_renders(port) - renders_before
    for _, writer in [*streams, *fetchers]:
        writer.close()
    return seconds, idle_share, renders


def changed_threshold(port: int) -> Callable[[], None]:
    """A change every dashboard must show: the threshold, saved through the API (as a call to make)."""
    current = json.loads(urllib.request.urlopen(f"http://{HOST}:{port}/api/settings", timeout=10).read())
    body = json.dumps({"memory_threshold_mib": 31 if current["memory_threshold_mib"] != 31 else 30}).encode()
    request = urllib.request.Request(f"http://{HOST}:{port}/api/settings", data=body, method="PUT",
                                     headers={"Content-Type": "application/json"})
    return lambda: urllib.request.urlopen(request, timeout=10).read() and None


def dashboard_renders(port: int) -> float:
    return metric(port, "gpuwarden_renders_total", '{view="dashboard"}')


def cli_seconds(stack: Stack, *args: str) -> float:
    started = time.perf_counter()
    subprocess.run(stack.cli(*args), check=True, capture_output=True, env=stack.env)
    return time.perf_counter() - started


@contextmanager
def pinned(core: int) -> Iterator[None]:
    if hasattr(os, "sched_setaffinity") and len(os.sched_getaffinity(0)) > 1:
        before = os.sched_getaffinity(0)
        os.sched_setaffinity(0, {core})
        try:
            yield
        finally:
            os.sched_setaffinity(0, before)
    else:
        yield


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--install-size", action="store_true", help="also measure a fresh install (a minute)")
    options = parser.parse_args()
    rows: list[tuple[str, str, str]] = []
    with tempfile.TemporaryDirectory(prefix="gw-bench-") as scratch, \
            start_stack(Path(scratch), server_core=SERVER_CORE) as stack, pinned(CLIENT_CORE):
        os.environ["GW_BENCH_PID_FILE"] = str(stack.pid_file)
        rows += web_rows(stack, options.runs, options.seconds)
        rows += probe_rows(stack, options.runs)
        rows.append(("`gpuwarden status --json` (fake nvidia-smi), s",
                     spread(runs_of(options.runs * 3, lambda: cli_seconds(stack, "status", "--json")), " s", 2),
                     "python -c pass: " + spread(runs_of(3, lambda: python_seconds(stack)), " s", 2)))
    if options.install_size:
        rows.append(("fresh install (site-packages, no pip/setuptools)", f"{install_size_mib(HERE.parent):.0f} MiB",
                     "target < 40 MiB"))
    print("| figure | gpuwarden (min / median / max) | limit or naive way, same run |")
    print("| --- | --- | --- |")
    for row in rows:
        print("| " + " | ".join(row) + " |")


def python_seconds(stack: Stack) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True, env=stack.env)
    return time.perf_counter() - started


def web_rows(stack: Stack, runs: int, seconds: float) -> list[tuple[str, str, str]]:
    rows = []
    measure(stack.port, "/api/gpus", seconds)  # warm both up: the first seconds of a server are slower
    measure(stack.bare_port, "/api/gpus", seconds)
    for label, path in (("cached `GET /api/gpus`, c=10", "/api/gpus"),
                        ("`GET /dashboard/refresh`, 8 GPUs × 20 models, c=10", "/dashboard/refresh")):
        ours, bare = [], []
        for _ in range(runs):  # side by side, run after run: the machine's drift hits both alike
            ours.append(measure(stack.port, path, seconds))
            bare.append(measure(stack.bare_port, path, seconds))
        ratios = [o.rate / b.rate for o, b in zip(ours, bare, strict=True)]
        naive_ms = stack.naive_render_ms(path)
        rows.append((label, f"{spread([o.rate for o in ours], ' req/s')};"
                            f" p99 {spread([o.percentile_ms(0.99) for o in ours], ' ms', 1)}",
                     f"bare Starlette, same bytes: {spread([b.rate for b in bare], ' req/s')}"
                     f" (ratio {spread(ratios, '', 2)}); a render per request: {naive_ms:.2f} ms each"
                     f" (≤ {1000 / naive_ms:,.0f} req/s)"))
    fan = [asyncio.run(fan_out(stack.port, DASHBOARDS)) for _ in range(runs)]
    naive_ms = DASHBOARDS * stack.naive_render_ms("/dashboard/refresh")
    rows.append((f"a change reaching {DASHBOARDS} open dashboards (event + fragment)",
                 f"{spread([s * 1000 for s, _, _ in fan], ' ms')}; renders per change {spread([r for _, _, r in fan])}",
                 f"a render per dashboard: {DASHBOARDS} renders, ≥ {naive_ms:,.0f} ms"))
    rows.append((f"idle CPU with {DASHBOARDS} dashboards connected", spread([c * 100 for _, c, _ in fan], " %", 2),
                 "streams polling every 0.25 s: 7–8.5 % (issue #13)"))
    return rows


def probe_rows(stack: Stack, runs: int) -> list[tuple[str, str, str]]:
    stack.set_smi_delay(0.5)
    p50s, probe_counts = [], []
    for _ in range(runs):
        calls_before = stack.smi_calls()
        result = asyncio.run(one_each(HOST, stack.port, "/api/gpus?refresh=true", 100))
        p50s.append(result.percentile_ms(0.5))
        probe_counts.append(stack.smi_calls() - calls_before)
    stack.set_smi_delay(0.0)
    return [("100 clients on `?refresh=true` (nvidia-smi takes 0.5 s)",
             f"p50 {spread(p50s, ' ms')}; nvidia-smi runs {spread([float(c) for c in probe_counts])}",
             "a probe per request: 100 runs")]


if __name__ == "__main__":
    main()
