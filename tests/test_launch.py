"""The pure launch plan: placeholders, environment, CUDA_VISIBLE_DEVICES."""

from __future__ import annotations

from pathlib import Path

from gpuwarden.config import ModelConfig
from gpuwarden.launch import health_url, needs_port, plan_launch, substitute

PYTHON = "/usr/bin/python3"


def spec(**values: object) -> ModelConfig:
    return ModelConfig.model_validate({"name": "llama", "command": ["server", "--port", "{port}"], **values})


def test_plan_fills_placeholders_and_selects_gpus() -> None:
    model = spec(command=["{python}", "-m", "srv", "--port", "{port}", "--gpus", "{gpus}", "--name", "{model}"],
                 env={"EXTRA": "on {gpus}", "KEEP": "{not-a-name} {0}"})
    plan = plan_launch(model, (0, 2), port=8123, base_env={"PATH": "/bin"}, default_cwd=Path("/state"),
                       python=PYTHON)
    assert plan.argv == (PYTHON, "-m", "srv", "--port", "8123", "--gpus", "0,2", "--name", "llama")
    assert plan.port == 8123 and plan.cwd == Path("/state") and plan.model_name == "llama"
    assert dict(plan.env) == {"PATH": "/bin", "EXTRA": "on 0,2", "KEEP": "{not-a-name} {0}",
                              "CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": "0,2",
                              "GPUWARDEN_MODEL": "llama"}


def test_cpu_plan_hides_every_gpu_and_drops_gpuwarden_settings() -> None:
    base = {"GPUWARDEN_MOCK_SMI": "x", "gpuwarden_state_dir": "y", "HOME": "/home/a", "CUDA_VISIBLE_DEVICES": "3"}
    plan = plan_launch(spec(env={"GPUWARDEN_OWN": "z"}, cwd="/models"), (), port=None, base_env=base,
                       default_cwd=Path("/state"), python=PYTHON)
    assert plan.env["CUDA_VISIBLE_DEVICES"] == ""
    assert {k for k in plan.env if k.upper().startswith("GPUWARDEN_")} == {"GPUWARDEN_MODEL"}
    assert plan.env["HOME"] == "/home/a" and plan.cwd == Path("/models")
    assert plan.argv == ("server", "--port", "")


def test_needs_port_and_health_url() -> None:
    assert needs_port(spec())
    assert not needs_port(spec(command=["server"]))
    assert needs_port(spec(command=["server"], env={"PORT": "{port}"}))
    assert needs_port(spec(command=["server"], health_url="http://127.0.0.1:{port}/health"))
    assert health_url(spec(), (0,), 9000, PYTHON) is None
    url = health_url(spec(health_url="http://127.0.0.1:{port}/h?m={model}&g={gpus}"), (1, 3), 9000, PYTHON)
    assert url == "http://127.0.0.1:9000/h?m=llama&g=1,3"


def test_substitute_leaves_unknown_braces() -> None:
    assert substitute("{a} {b} {{a}} {a.__class__}", {"a": "1"}) == "1 {b} {1} {a.__class__}"
