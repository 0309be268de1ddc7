"""A fake model for tests: registers itself with the fake nvidia-smi on the GPUs of its
CUDA_VISIBLE_DEVICES (as a CUDA process would appear), then runs until stopped.

Options: --mib N (memory it "uses"), --exit-after S --exit-code C, --ignore-term (must be killed),
--child (spawn a grandchild that also registers, to test whole-tree stops), --handoff (start the
real model as a child and exit at once, as ``cmd /c start`` does), --name NAME. On Windows it ends
with code 3 on Ctrl+Break (the graceful stop), unless --ignore-term.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil


def register(name: str, mib: int, gpus: list[int]) -> None:
    procs = Path(os.environ["FAKE_SMI_DIR"]) / "procs"
    procs.mkdir(parents=True, exist_ok=True)
    path = procs / f"{os.getpid()}.json"
    temporary = path.with_suffix(".tmp")
    # The start time tells this process from a later one given the same PID (Windows, and Wine above
    # all, reuse PIDs quickly), as nvidia-smi lists only processes that really hold the GPU.
    created = psutil.Process().create_time()
    temporary.write_text(json.dumps({"pid": os.getpid(), "created": created, "name": name, "mib": mib, "gpus": gpus}),
                         encoding="utf-8")
    os.replace(temporary, path)


def _graceful(signum: int, frame: object) -> None:
    print("fake model got Ctrl+Break", flush=True)
    sys.exit(3)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mib", type=int, default=500)
    parser.add_argument("--exit-after", type=float, default=None)
    parser.add_argument("--exit-code", type=int, default=0)
    parser.add_argument("--ignore-term", action="store_true")
    parser.add_argument("--child", action="store_true")
    parser.add_argument("--gpus", default=None, help="register on these GPUs instead of CUDA_VISIBLE_DEVICES")
    parser.add_argument("--name", default="python3")
    parser.add_argument("--handoff", action="store_true")
    options = parser.parse_args()
    visible = options.gpus if options.gpus is not None else os.environ.get("CUDA_VISIBLE_DEVICES", "")
    gpus = [int(part) for part in visible.split(",") if part.strip()]
    if options.handoff:
        subprocess.Popen([sys.executable, __file__, "--mib", str(options.mib), "--gpus", visible])
        print("fake model handed off", flush=True)
        return 0
    if options.ignore_term:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if hasattr(signal, "SIGBREAK"):
        signal.signal(signal.SIGBREAK, signal.SIG_IGN if options.ignore_term else _graceful)
    register(options.name, options.mib, gpus)
    print(f"fake model pid {os.getpid()} on GPUs {gpus}", flush=True)
    if options.child:
        subprocess.Popen([sys.executable, __file__, "--mib", "100", "--gpus", visible])
    started = time.monotonic()
    while True:
        time.sleep(0.05)
        if options.exit_after is not None and time.monotonic() - started >= options.exit_after:
            print("fake model exiting", flush=True)
            return options.exit_code


if __name__ == "__main__":
    sys.exit(main())
