"""The built-in demo (``gpuwarden serve --demo``): the seed's two-GPU recording and two harmless demo models.

The package holds everything the demo needs: these settings, the demo model server
(:mod:`gpuwarden.demo.model_server`) and, in an installed wheel, the recording ``gpu.txt``
(in a checkout it is the seed's ``data/gpu.txt``).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from gpuwarden.config import default_state_dir

DEMO_SMI_NAME = "gpu.txt"


def demo_smi_path() -> Path:
    """``gpu.txt`` in this package (an installed wheel), else the checkout's ``data/gpu.txt``."""
    packaged = Path(__file__).parent / DEMO_SMI_NAME
    if packaged.is_file():
        return packaged
    return Path(__file__).resolve().parents[3] / "data" / DEMO_SMI_NAME


def demo_overrides(state_dir: Path | None = None) -> dict[str, Any]:
    """Settings for ``serve --demo``: mock GPUs, demo models, ``<state_dir>/demo`` (the
    configured state_dir, else the default) as a state directory of its own, and no accounts (the
    demo has none: it runs on loopback only, like any ``auth = "none"`` server)."""
    command = [sys.executable, "-m", "gpuwarden.demo.model_server", "--port", "{port}"]
    return {
        "mock_smi": demo_smi_path(),
        "mock_smi_text": None,
        "auth": "none",
        "state_dir": (state_dir or default_state_dir()) / "demo",
        "models": [
            {"name": "llama-7b", "command": command, "health_url": "http://127.0.0.1:{port}/health",
             "description": "Demo model (a harmless local program)."},
            {"name": "qwen-14b", "command": [*command, "--startup-seconds", "3"], "default_gpus": 2,
             "health_url": "http://127.0.0.1:{port}/health", "description": "Demo model wanting two GPUs."},
        ],
    }
