"""The built-in demo (``gpuwarden serve --demo``): a simulated three-GPU machine
(:mod:`gpuwarden.probe.simulated`) and three harmless demo models that show on its GPUs while they run.

The package holds the demo's settings and the demo model server (:mod:`gpuwarden.demo.model_server`).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from gpuwarden.config import default_state_dir
from gpuwarden.probe.demo_registry import registry_dir


def demo_overrides(state_dir: Path | None = None) -> dict[str, Any]:
    """Settings for ``serve --demo``: the simulated machine (``gpu_source = "demo"``), demo models,
    ``<state_dir>/demo`` (the configured state_dir, else the default) as a state directory of its
    own, with accounts of its own. ``auth`` is the configured one (``none`` by default: loopback only),
    so people can try accounts on the demo too (``gpuwarden --demo users add NAME --admin``, then
    ``GPUWARDEN_AUTH=password gpuwarden serve --demo``)."""
    demo_state = (state_dir or default_state_dir()) / "demo"
    command = [sys.executable, "-m", "gpuwarden.demo.model_server", "--port", "{port}",
               "--registry", str(registry_dir(demo_state))]
    health = "http://127.0.0.1:{port}/health"
    return {
        "gpu_source": "demo",
        "mock_smi": None,
        "mock_smi_text": None,
        "state_dir": demo_state,
        "models": [
            {"name": "llama-7b", "command": [*command, "--memory-mib", "6912"], "health_url": health,
             "description": "Demo model: 6.8 GiB on one GPU (a harmless local program)."},
            {"name": "qwen-14b", "command": [*command, "--memory-mib", "9216", "--startup-seconds", "3"],
             "default_gpus": 2, "health_url": health, "description": "Demo model: 9 GiB on each of two GPUs."},
            {"name": "whisper-large", "command": [*command, "--memory-mib", "3072"], "health_url": health,
             "description": "Demo model: 3 GiB, small enough to share the desktop's GPU."},
        ],
    }
