"""On a real NVIDIA machine: NVML source vs nvidia-smi source, idle and with a foreign CUDA process.
Prints what each sees and how long a snapshot takes (median of 20). Needs torch for the busy case."""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from gpuwarden.config import load_settings
from gpuwarden.probe.sources import make_source


def show(label: str) -> None:
    for name in ("nvidia-smi", "nvml"):
        settings = load_settings(environ={}, overrides={"state_dir": tempfile.mkdtemp(), "gpu_source": name})
        source = make_source(settings)
        snapshot = source.snapshot()
        times = []
        for _ in range(20):
            started = time.perf_counter()
            source.snapshot()
            times.append((time.perf_counter() - started) * 1000)
        print(f"{label:5} {name:10} source={snapshot.source} warnings={list(snapshot.warnings)} "
              f"median {statistics.median(times):.2f} ms")
        for gpu in snapshot.gpus:
            print(f"      GPU {gpu.index} {gpu.name} {gpu.uuid} {gpu.bus_id} used={gpu.memory_used_mib} "
                  f"total={gpu.memory_total_mib}")
        for p in snapshot.processes:
            print(f"      pid={p.pid} name={p.name} type={p.type} mib={p.used_memory_mib} user={p.user}")


show("idle")
busy = subprocess.Popen([sys.executable, "-c", "import torch,time; x=torch.empty(2*1024**3, dtype=torch.uint8,"
                         " device='cuda'); print('ready', flush=True); time.sleep(300)"], stdout=subprocess.PIPE)
assert busy.stdout is not None
busy.stdout.readline()
time.sleep(1)
show("busy")
busy.kill()
