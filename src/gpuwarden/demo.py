"""Built-in demo data: the seed's two-GPU output and two harmless demo models."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from gpuwarden.config import default_state_dir

DEMO_SMI_NAME = "gpu.txt"


def demo_smi_path() -> Path:
    """``data/gpu.txt``: packaged with the wheel, or beside the source in a checkout."""
    packaged = Path(__file__).parent / "data" / DEMO_SMI_NAME
    if packaged.is_file():
        return packaged
    return Path(__file__).resolve().parents[2] / "data" / DEMO_SMI_NAME


def demo_overrides() -> dict[str, Any]:
    """Settings for ``serve --demo``: mock GPUs, demo models, a state directory of its own."""
    command = [sys.executable, "-m", "gpuwarden.demo_model", "--port", "{port}"]
    return {
        "mock_smi": demo_smi_path(),
        "mock_smi_text": None,
        "state_dir": default_state_dir() / "demo",
        "models": [
            {"name": "llama-7b", "command": command, "health_url": "http://127.0.0.1:{port}/health",
             "description": "Demo model (a harmless local program)."},
            {"name": "qwen-14b", "command": [*command, "--startup-seconds", "3"], "default_gpus": 2,
             "health_url": "http://127.0.0.1:{port}/health", "description": "Demo model wanting two GPUs."},
        ],
    }
