"""Benchmark: a real `gpuwarden serve` while nvidia-smi hangs. 50 pollers hammer
`/api/gpus?refresh=true`; meanwhile the endpoints that need no new reading are timed. Prints a
Markdown table (see README).

    .venv/bin/python bench/bench_hung_smi.py
"""

from __future__ import annotations

import json
import os
import stat
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from bench_stack import free_port  # beside this script

ROOT = Path(__file__).resolve().parents[1]
FAKE_SMI = ROOT / "tests" / "fakes" / "fake_nvidia_smi.py"
POLLERS = 50
SAMPLES = 200


def get(url: str, timeout: float = 60.0) -> float:
    started = time.perf_counter()
    with urllib.request.urlopen(url, timeout=timeout) as response:
        response.read()
    return (time.perf_counter() - started) * 1000


def fake_nvidia_smi(folder: Path) -> dict[str, str]:
    (folder / "procs").mkdir(parents=True)
    (folder / "bin").mkdir()
    script = folder / "bin" / "nvidia-smi"
    script.write_text(f"#!{sys.executable}\n" + FAKE_SMI.read_text(encoding="utf-8"), encoding="utf-8")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    (folder / "gpus.json").write_text(json.dumps([{"base_used": 1, "total": 24564, "name": "Fake"}] * 2))
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPUWARDEN_")}
    return {**env, "PATH": f"{folder / 'bin'}{os.pathsep}{env.get('PATH', '')}", "FAKE_SMI_DIR": str(folder),
            "GPUWARDEN_STATE_DIR": str(folder / "state")}


def main() -> None:
    with tempfile.TemporaryDirectory() as temp:
        folder = Path(temp)
        env = fake_nvidia_smi(folder)
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        server = subprocess.Popen([sys.executable, "-m", "gpuwarden", "serve", "--port", str(port)], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            for _ in range(100):
                try:
                    get(base + "/api/settings", timeout=1)
                    break
                except OSError:
                    time.sleep(0.1)
            (folder / "mode").write_text("hang")  # from now on nvidia-smi hangs (15 s timeout)
            stop = threading.Event()

            def poll() -> None:
                while not stop.is_set():
                    try:
                        get(base + "/api/gpus?refresh=true")
                    except OSError:
                        time.sleep(0.1)

            pollers = [threading.Thread(target=poll, daemon=True) for _ in range(POLLERS)]
            for thread in pollers:
                thread.start()
            time.sleep(1.0)
            rows = []
            for path in ("/api/settings", "/api/models", "/api/gpus"):
                samples = sorted(get(base + path) for _ in range(SAMPLES))
                rows.append((path, statistics.median(samples), samples[int(len(samples) * 0.99) - 1], samples[-1]))
            stop.set()
            runs = len((folder / "calls").read_text().splitlines())
        finally:
            server.terminate()
            server.wait(20)
    print(f"| while nvidia-smi hangs, {POLLERS} pollers on `?refresh=true` | median | p99 | max |")
    print("| --- | --- | --- | --- |")
    for path, median, p99, worst in rows:
        print(f"| `GET {path}` ({SAMPLES} requests) | {median:.1f} ms | {p99:.1f} ms | {worst:.1f} ms |")
    print(f"\nnvidia-smi runs in all (start-up included): {runs}")


if __name__ == "__main__":
    main()
