"""Pure: what a load runs. A model's configured command, environment and health URL, with their
placeholders filled in, become one :class:`LaunchPlan`; nothing here starts anything.

Placeholders: ``{port}`` (a free TCP port chosen at load time), ``{gpus}`` (e.g. ``0,1``),
``{model}`` (the model's name) and ``{python}`` (gpuwarden's Python). The configuration refuses any
other ``{name}``; other braces (``{0}``, JSON) are left as they are: no format-string tricks, since a
command's words are plain data.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from gpuwarden.config import ModelConfig

ENV_PREFIX = "GPUWARDEN_"
MODEL_ENV = "GPUWARDEN_MODEL"


@dataclass(frozen=True)
class LaunchPlan:
    """Everything needed to start one model: argv, full environment and working directory."""

    model_name: str
    argv: tuple[str, ...]
    env: Mapping[str, str]
    cwd: Path
    port: int | None


def needs_port(spec: ModelConfig) -> bool:
    """Does the model's command, environment or health URL use ``{port}``?"""
    return any("{port}" in part for part in (*spec.command, *spec.env.values(), spec.health_url or ""))


def placeholders(model: str, gpu_indexes: Sequence[int], port: int | None, python: str) -> dict[str, str]:
    """The values of ``{port}``, ``{gpus}``, ``{model}`` and ``{python}``."""
    return {"port": str(port or ""), "gpus": ",".join(map(str, gpu_indexes)), "model": model, "python": python}


def substitute(template: str, values: Mapping[str, str]) -> str:
    """Replace ``{name}`` placeholders; unknown braces are left as they are."""
    result = template
    for key, value in values.items():
        result = result.replace("{" + key + "}", value)
    return result


def model_environment(spec: ModelConfig, gpu_indexes: Sequence[int], values: Mapping[str, str],
                      base_env: Mapping[str, str]) -> dict[str, str]:
    """gpuwarden's environment, the model's own variables, and the GPU selection.

    ``CUDA_DEVICE_ORDER=PCI_BUS_ID`` makes CUDA number GPUs the way nvidia-smi does, so
    ``CUDA_VISIBLE_DEVICES`` names exactly the selected GPUs. The model does not inherit
    gpuwarden's own ``GPUWARDEN_*`` settings (mock mode and the like).
    """
    env = dict(base_env)
    env.update({key: substitute(value, values) for key, value in spec.env.items()})
    env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
    env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, gpu_indexes))
    env = {key: value for key, value in env.items() if not key.upper().startswith(ENV_PREFIX)}
    env[MODEL_ENV] = spec.name
    return env


def plan_launch(spec: ModelConfig, gpu_indexes: Sequence[int], *, port: int | None, base_env: Mapping[str, str],
                default_cwd: Path, python: str) -> LaunchPlan:
    """The plan for loading ``spec`` onto ``gpu_indexes`` (empty: the CPU)."""
    values = placeholders(spec.name, gpu_indexes, port, python)
    return LaunchPlan(
        model_name=spec.name,
        argv=tuple(substitute(part, values) for part in spec.command),
        env=model_environment(spec, gpu_indexes, values, base_env),
        cwd=spec.cwd or default_cwd,
        port=port,
    )


def health_url(spec: ModelConfig, gpu_indexes: Sequence[int], port: int | None, python: str) -> str | None:
    """The model's health URL with its placeholders filled in (None: no HTTP health check)."""
    if not spec.health_url:
        return None
    return substitute(spec.health_url, placeholders(spec.name, gpu_indexes, port, python))
