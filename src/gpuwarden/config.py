"""Settings: one object, from a TOML file with ``GPUWARDEN_*`` environment variables over it.

Built by :func:`load_settings` (never at import). A bad value raises :class:`ConfigError` whose
message names the key, so start-up stops with a sentence the user can act on.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import os
import re
import sys
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from gpuwarden.desktop import DEFAULT_DESKTOP_MEMORY_LIMIT_MIB, DEFAULT_DESKTOP_PROCESSES
from gpuwarden.desktop import MAX_NAME_CHARS as MAX_PROGRAM_NAME_CHARS
from gpuwarden.people import AuthMode
from gpuwarden.runtime import RUNTIME_SETTING_RANGES

ENV_PREFIX = "GPUWARDEN_"
MODEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
# The placeholders a model's command, env and health URL may use (filled in by gpuwarden.launch).
PLACEHOLDERS = ("port", "gpus", "model", "python")
PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


class ConfigError(Exception):
    """The configuration cannot be used; the message names the bad key."""


def default_config_path() -> Path:
    """``%APPDATA%\\gpuwarden\\gpuwarden.toml`` on Windows, else ``$XDG_CONFIG_HOME/gpuwarden/gpuwarden.toml``."""
    if sys.platform == "win32":
        base = Path(os.environ.get("APPDATA") or Path.home() / "AppData" / "Roaming")
    else:
        base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "gpuwarden" / "gpuwarden.toml"


def default_state_dir() -> Path:
    """``%LOCALAPPDATA%\\gpuwarden`` on Windows, else ``$XDG_STATE_HOME/gpuwarden``."""
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    else:
        base = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    return base / "gpuwarden"


class ModelConfig(BaseModel):
    """One ``[[models]]`` entry: a program gpuwarden launches and supervises on chosen GPUs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=MODEL_NAME_PATTERN, description="Unique name shown in the UI and used by the CLI.")
    command: tuple[str, ...] = Field(
        min_length=1,
        description="argv list. Placeholders: {port} (a free TCP port chosen at load), {gpus} (e.g. '0,1'),"
        " {model} (the model's name), {python} (this Python interpreter).")
    env: dict[str, str] = Field(default_factory=dict, description="Extra environment variables (placeholders allowed).")
    cwd: Path | None = Field(default=None, description="Working directory; default: the state directory.")
    health_url: str | None = Field(
        default=None, description="HTTP URL polled until it answers 2xx (placeholders allowed); "
        "without it the model is running once its process has stayed alive for startup_grace_seconds.")
    default_gpus: int = Field(default=1, ge=0, le=64, description="How many GPUs the model wants by default.")
    startup_timeout_seconds: float = Field(
        default=900.0, gt=0, description="Health check deadline; past it the model is stopped and marked failed.")
    startup_grace_seconds: float = Field(
        default=2.0, ge=0, description="Without health_url: how long the process must stay alive to count as running.")
    description: str = Field(default="", max_length=500, description="Shown in the dashboard.")
    idle_unload_minutes: int | None = Field(
        default=None, ge=1, le=10_080, description="Unload the model once its GPUs have stayed at or below"
        " idle_utilization_percent this long (off by default).")
    idle_utilization_percent: int = Field(
        default=5, ge=0, le=99, description="GPU utilization at or below which the model's GPUs count as idle.")

    @field_validator("command", mode="before")
    @classmethod
    def _command_is_a_list(cls, value: object) -> object:
        if isinstance(value, str):
            raise ValueError(f"command must be a list of arguments, e.g. {json.dumps(value.split()[:3])}, "
                             "never a shell string")
        return value

    @field_validator("command")
    @classmethod
    def _command_words(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value[0].strip():
            raise ValueError("the program (first word) is empty")
        return value

    @model_validator(mode="after")
    def _known_placeholders(self) -> ModelConfig:
        texts = [*self.command, *self.env.values(), self.health_url or ""]
        unknown = sorted({name for text in texts for name in PLACEHOLDER.findall(text)} - set(PLACEHOLDERS))
        if unknown:
            known = ", ".join("{" + name + "}" for name in PLACEHOLDERS)
            raise ValueError(f"unknown placeholder {', '.join('{' + n + '}' for n in unknown)} (known: {known})")
        return self

    @field_validator("env")
    @classmethod
    def _env_names(cls, value: dict[str, str]) -> dict[str, str]:
        for key in value:
            if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", key):
                raise ValueError(f"invalid environment variable name {key!r}")
        return value


class Settings(BaseModel):
    """Every gpuwarden setting. TOML keys and ``GPUWARDEN_<KEY>`` variables share these names.

    :func:`load_settings` merges the file, the environment and the command line into one dict first,
    so that a validation error names the key whichever source gave it (a plain pydantic model: the
    CLI starts without pydantic-settings' sources, asyncio among them)."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    memory_threshold_mib: int = Field(
        default=30, ge=RUNTIME_SETTING_RANGES["memory_threshold_mib"][0],
        le=RUNTIME_SETTING_RANGES["memory_threshold_mib"][1],
        description="Memory used strictly above this (MiB) marks a GPU in use.")
    refresh_interval_seconds: int = Field(
        default=300, ge=RUNTIME_SETTING_RANGES["refresh_interval_seconds"][0],
        le=RUNTIME_SETTING_RANGES["refresh_interval_seconds"][1],
        description="How often the server and the dashboard refresh GPU status.")
    history_interval_seconds: int = Field(
        default=30, ge=0, le=3600, description="The server reads the GPUs this often to keep the last hour of "
        "memory and utilization (the dashboard's sparklines, /api/gpus/history); 0: only at each refresh.")
    gpu_source: Literal["nvidia-smi", "nvml", "demo"] = Field(
        default="nvidia-smi", description="Where GPU status comes from: nvidia-smi, or NVML (falls back to "
        "nvidia-smi when NVML cannot be used), or 'demo': the simulated machine of `serve --demo`.")
    nvidia_smi_path: Path | None = Field(
        default=None, description="nvidia-smi to run; default: PATH, then the usual Windows locations.")
    nvidia_smi_timeout_seconds: float = Field(
        default=15.0, gt=0, le=600, description="A hung nvidia-smi is killed after this long.")
    mock_smi: Path | None = Field(
        default=None, description="Read this recorded nvidia-smi output instead of running nvidia-smi "
        "(several files joined with the OS path separator are combined).")
    mock_smi_text: str | None = Field(default=None, description="The recorded output itself (wins over mock_smi).")
    mock_smi_columns: str | None = Field(
        default=None, description="Column names of a headerless CSV mock, e.g. 'index,memory.used'.")
    state_dir: Path = Field(default_factory=default_state_dir,
                            description="Where the state database and model logs live.")
    stop_models_on_exit: bool = Field(
        default=False, description="Stop running models when the server stops (default: leave them running).")
    unload_timeout_seconds: float = Field(
        default=10.0, gt=0, le=600, description="Graceful stop time before a model's processes are killed.")
    host: str = Field(default="127.0.0.1", description="Address `gpuwarden serve` listens on.")
    port: int = Field(default=8000, ge=1, le=65535, description="Port `gpuwarden serve` listens on.")
    auth: AuthMode = Field(
        default=AuthMode.NONE, description="'none': no accounts, every local account can act on every model "
        "(allowed only when the server listens on loopback); 'password': accounts with passwords, sessions and "
        "API tokens (`gpuwarden users add`), only a model's owner or an admin unloads it.")
    allowed_hosts: tuple[str, ...] = Field(
        default=(), description="Extra host names the server answers to (the names people use on the LAN, e.g. "
        "['gpu-box', 'gpu-box.lab.example']); the bound address and, on loopback, 'localhost' are always allowed.")
    trusted_proxies: tuple[str, ...] = Field(
        default=(), description="Addresses of reverse proxies (TLS) in front of the server whose X-Forwarded-For "
        "and X-Forwarded-Proto headers are believed, e.g. ['127.0.0.1']; from anyone else they are ignored.")
    session_lifetime_hours: float = Field(
        default=168.0, gt=0, le=8760, description="How long a dashboard login lasts.")
    audit_retention_days: int = Field(
        default=365, ge=1, le=36500, description="Audit entries older than this are deleted.")
    desktop_processes: tuple[str, ...] = Field(
        default=DEFAULT_DESKTOP_PROCESSES, description="Programs of the desktop (window manager, shell, X server) "
        "whose GPU memory is shown but does not make a GPU occupied by someone else, so a display GPU stays "
        "loadable; names without folder, case-insensitive, '.exe' optional. Only a process that draws (type G or "
        "C+G) counts as desktop. [] counts every process.")
    desktop_memory_limit_mib: int = Field(
        default=DEFAULT_DESKTOP_MEMORY_LIMIT_MIB, ge=0, le=1_000_000, description="The most GPU memory the desktop's "
        "processes are credited with on one GPU; any use above it counts, whatever the processes are called.")
    idle_notice_minutes: int = Field(
        default=15, ge=1, le=10_080, description="The dashboard marks a loaded model whose GPUs have been idle"
        " this long (at or below the model's idle_utilization_percent), so hoarded GPUs show.")
    wait_timeout_minutes: int = Field(
        default=60, ge=1, le=10_080, description="How long a load waits in the queue for busy GPUs when the"
        " request names no time (the dashboard's 'Wait for GPU N', load --wait without --timeout, the API's"
        " wait without wait_timeout_seconds).")
    models: tuple[ModelConfig, ...] = Field(default=(), description="The models users can load ([[models]]).")
    _notes: tuple[str, ...] = PrivateAttr(default=())

    @field_validator("state_dir")
    @classmethod
    def _absolute_state_dir(cls, value: Path) -> Path:
        """Absolute, so model logs and launcher records are found from any working directory."""
        return value.expanduser().absolute()

    @field_validator("allowed_hosts", "trusted_proxies", "desktop_processes", mode="before")
    @classmethod
    def _host_list(cls, value: object) -> object:
        if isinstance(value, str):  # GPUWARDEN_ALLOWED_HOSTS=gpu-box,gpu-box.lab
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("allowed_hosts")
    @classmethod
    def _host_names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for host in value:
            if not re.match(r"^[A-Za-z0-9.:_\-\[\]]{1,253}$", host) or host == "*":
                raise ValueError(f"{host[:60]!r} is not a host name or address (no wildcards, no ports)")
        return tuple(host.strip("[]").lower().rstrip(".") for host in value)

    @field_validator("desktop_processes")
    @classmethod
    def _program_names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for name in value:
            if not name.strip() or len(name) > MAX_PROGRAM_NAME_CHARS or not name.isprintable() or "/" in name \
                    or "\\" in name:
                raise ValueError(f"{name[:60]!r} is not a program name (no folder, at most "
                                 f"{MAX_PROGRAM_NAME_CHARS} printable characters)")
        return tuple(name.strip() for name in value)

    @field_validator("trusted_proxies")
    @classmethod
    def _proxy_addresses(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for address in value:
            try:
                ipaddress.ip_network(address, strict=False)
            except ValueError:
                raise ValueError(f"{address[:60]!r} is not an IP address or network") from None
        return value

    @field_validator("mock_smi_text", "mock_smi_columns")
    @classmethod
    def _empty_is_none(cls, value: str | None) -> str | None:
        return value if value else None

    @model_validator(mode="after")
    def _unique_model_names(self) -> Settings:
        names = [model.name for model in self.models]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"models: duplicate name {', '.join(duplicates)}")
        return self

    @property
    def notes(self) -> tuple[str, ...]:
        """Warnings from reading the settings (unknown GPUWARDEN_* variables): shown, never fatal."""
        return self._notes

    @property
    def wait_timeout_seconds(self) -> int:
        """How long a queued load waits when its request names no time."""
        return self.wait_timeout_minutes * 60

    def model(self, name: str) -> ModelConfig | None:
        return next((m for m in self.models if m.name == name), None)

    @property
    def mock_enabled(self) -> bool:
        return self.mock_smi is not None or self.mock_smi_text is not None

    @property
    def mock_columns(self) -> tuple[str, ...] | None:
        if not self.mock_smi_columns:
            return None
        return tuple(part.strip() for part in self.mock_smi_columns.split(",") if part.strip())


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as error:
        raise ConfigError(f"cannot read config file {path}: {error.strerror or error}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"config file {path} is not valid TOML: {error}") from None
    # Setting names are read whatever their case ("Port" is port), as the environment's are.
    keys: dict[str, str] = {}
    for key in data:
        if keys.setdefault(key.lower(), key) != key:
            raise ConfigError(f"config file {path} sets '{key.lower()}' twice ({keys[key.lower()]}, {key})")
    return {key.lower(): value for key, value in data.items()}


def _format_validation_error(error: ValidationError, origin: dict[str, str], default_origin: str) -> str:
    lines = []
    for problem in error.errors():
        location = ".".join(str(part) for part in problem["loc"]) or "(settings)"
        source = origin.get(str(problem["loc"][0]), default_origin) if problem["loc"] else default_origin
        if problem["type"] == "extra_forbidden":
            lines.append(f"unknown setting '{location}' in {source}")
        else:
            lines.append(f"invalid setting '{location}' (from {source}): {problem['msg']}")
    return "; ".join(lines)


def config_file(config_path: Path | None, environ: Mapping[str, str] | None = None) -> tuple[Path, bool]:
    """The configuration file to read: ``config_path``, else ``GPUWARDEN_CONFIG``, else the default
    location; and whether it was named (then it must exist)."""
    env = os.environ if environ is None else environ
    named = config_path or (Path(env[ENV_PREFIX + "CONFIG"]) if env.get(ENV_PREFIX + "CONFIG") else None)
    return (named or default_config_path()), named is not None


def file_settings(path: Path) -> dict[str, Any]:
    """The settings a configuration file itself sets (ConfigError if it cannot be read)."""
    return _read_toml(path)


def load_settings(
    config_path: Path | None = None,
    environ: dict[str, str] | None = None,
    overrides: dict[str, Any] | None = None,
) -> Settings:
    """Build the settings: ``overrides`` (command line) over environment over TOML file over defaults.

    The file is ``config_path``, else ``GPUWARDEN_CONFIG``, else :func:`default_config_path` if it
    exists. An explicitly named file that does not exist is an error.
    """
    env = dict(os.environ if environ is None else environ)
    path, explicit = config_file(config_path, env)
    file_values: dict[str, Any] = {}
    if explicit or path.is_file():
        if explicit and not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        file_values = _read_toml(path)
    file_origin = f"config file {path}"
    env_values = {
        key[len(ENV_PREFIX):].lower(): value
        for key, value in env.items()
        if key.upper().startswith(ENV_PREFIX) and key[len(ENV_PREFIX):].lower() != "config"
    }
    if "models" in env_values:
        raise ConfigError(f"'{ENV_PREFIX}MODELS' in the environment: models (and their commands) come only from"
                          f" the config file ({path})")
    notes = [_unknown_variable_note(key) for key in sorted(env_values) if key not in Settings.model_fields]
    env_values = {key: value for key, value in env_values.items() if key in Settings.model_fields}
    merged = {**_paths_from(file_values, path.absolute().parent), **env_values, **(overrides or {})}
    try:
        settings = Settings(**merged)
    except ValidationError as error:
        origin = dict.fromkeys(file_values, file_origin)
        origin.update({key: f"environment variable {ENV_PREFIX}{key.upper()}" for key in env_values})
        origin.update(dict.fromkeys(overrides or {}, "the command line"))
        raise ConfigError(_format_validation_error(error, origin, file_origin)) from None
    settings._notes = tuple(note for note in notes if note)
    return settings


# GPUWARDEN_* variables that are not settings but are meant for gpuwarden's tools: never warned about.
OTHER_VARIABLES = frozenset({"config", "model", "chromium", "require_browser", "update_golden", "kill_cycles"})


def _unknown_variable_note(key: str) -> str | None:
    """A warning for an unknown GPUWARDEN_* variable, naming the closest setting."""
    if key in OTHER_VARIABLES:
        return None
    close = difflib.get_close_matches(key, [name for name in Settings.model_fields if name != "models"], n=1,
                                      cutoff=0.5)
    hint = f"; did you mean {ENV_PREFIX}{close[0].upper()}?" if close else ""
    return f"ignoring unknown environment variable {ENV_PREFIX}{key.upper()}{hint}"


# Settings holding paths: relative ones in the config file are read from the file's own folder.
FILE_RELATIVE_PATHS = ("mock_smi", "nvidia_smi_path", "state_dir")


def _paths_from(file_values: dict[str, Any], folder: Path) -> dict[str, Any]:
    """The file's values with its relative paths made absolute from the file's folder (not from
    wherever gpuwarden happens to be started)."""
    values = dict(file_values)
    for key in FILE_RELATIVE_PATHS:
        if isinstance(values.get(key), str) and values[key]:
            parts = values[key].split(os.pathsep) if key == "mock_smi" else [values[key]]
            values[key] = os.pathsep.join(str(folder / Path(part)) for part in parts if part)
    if isinstance(values.get("models"), list):
        values["models"] = [
            {**model, "cwd": str(folder / Path(model["cwd"]))}
            if isinstance(model, dict) and isinstance(model.get("cwd"), str) and model["cwd"] else model
            for model in values["models"]]
    return values


def documented_settings() -> dict[str, str]:
    """Every setting with its description: the README and the example file must cover them all."""
    return {name: field.description or "" for name, field in Settings.model_fields.items()}
