"""Settings: TOML + GPUWARDEN_* environment, errors that name the key, every setting documented."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from gpuwarden.config import ConfigError, ModelConfig, Settings, documented_settings, load_settings
from tests.conftest import REPO


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults(tmp_path: Path) -> None:
    settings = load_settings(environ={"XDG_CONFIG_HOME": str(tmp_path)})
    assert (settings.memory_threshold_mib, settings.refresh_interval_seconds) == (30, 300)
    assert settings.models == () and not settings.mock_enabled and settings.stop_models_on_exit is False


def test_file_then_environment_then_overrides(tmp_path: Path) -> None:
    config = write(tmp_path / "g.toml", 'memory_threshold_mib = 50\nrefresh_interval_seconds = 60\n'
                   '[[models]]\nname = "m"\ncommand = ["prog", "--port", "{port}"]\n')
    settings = load_settings(config, environ={"GPUWARDEN_REFRESH_INTERVAL_SECONDS": "120"},
                             overrides={"port": 9000})
    assert (settings.memory_threshold_mib, settings.refresh_interval_seconds, settings.port) == (50, 120, 9000)
    assert settings.models[0].command == ("prog", "--port", "{port}")


def test_setting_names_are_read_whatever_their_case(tmp_path: Path) -> None:
    config = write(tmp_path / "g.toml", 'Port = 9000\nMEMORY_THRESHOLD_MIB = 64\n')
    settings = load_settings(config, environ={"gpuwarden_refresh_interval_seconds": "90"})
    assert (settings.port, settings.memory_threshold_mib, settings.refresh_interval_seconds) == (9000, 64, 90)


def test_config_from_environment_variable(tmp_path: Path) -> None:
    config = write(tmp_path / "g.toml", "memory_threshold_mib = 77\n")
    assert load_settings(environ={"GPUWARDEN_CONFIG": str(config)}).memory_threshold_mib == 77


@pytest.mark.parametrize(("text", "env", "message"), [
    ("memory_threshold_mib = -1\n", {}, "'memory_threshold_mib'"),
    ('memory_threshold_mib = "lots"\n', {}, "'memory_threshold_mib'"),
    ("refresh_interval_seconds = 0\n", {}, "'refresh_interval_seconds'"),
    ("colour = 1\n", {}, "unknown setting 'colour'"),
    ("", {"GPUWARDEN_PORT": "http"}, "GPUWARDEN_PORT"),
    ("", {"GPUWARDEN_MODELS": "[]"}, "models (and their commands) come only from the config file"),
    ('[[models]]\nname = "a"\ncommand = ["x", "--port", "{prot}"]\n', {}, "unknown placeholder {prot} (known: {port}"),
    ('[[models]]\nname = "a b"\ncommand = ["x"]\n', {}, "'models.0.name'"),
    ('[[models]]\nname = "a"\ncommand = []\n', {}, "'models.0.command'"),
    ('[[models]]\nname = "a"\ncommand = "sleep 9"\n', {}, "'models.0.command' (from config file"),
    ('[[models]]\nname = "a"\ncommand = "sleep 9"\n', {}, 'command must be a list of arguments, e.g. ["sleep", "9"]'),
    ('[[models]]\nname = "a"\ncommand = ["x"]\n[[models]]\nname = "a"\ncommand = ["y"]\n', {}, "duplicate name a"),
    ("memory_threshold_mib = \n", {}, "not valid TOML"),
    ("Port = 9000\nport = 9001\n", {}, "sets 'port' twice (Port, port)"),
])
def test_bad_values_name_the_key(tmp_path: Path, text: str, env: dict[str, str], message: str) -> None:
    config = write(tmp_path / "g.toml", text)
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_settings(config, environ=env)


def test_missing_named_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.toml", environ={})


def test_example_file_is_valid_and_covers_every_setting() -> None:
    example = REPO / "gpuwarden.example.toml"
    settings = load_settings(example, environ={})
    assert [m.name for m in settings.models] == ["llama-7b", "qwen-14b"]
    text = example.read_text(encoding="utf-8")
    for name in Settings.model_fields:
        if name != "models":
            assert re.search(rf"^#? ?{name} =", text, re.MULTILINE), f"{name} missing from gpuwarden.example.toml"
    for name in ModelConfig.model_fields:
        assert re.search(rf"^#? ?{name} =", text, re.MULTILINE), f"models.{name} missing from the example"
    assert tomllib.loads(text)


def test_every_setting_is_documented_in_the_readme() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    for name, description in documented_settings().items():
        assert f"`{name}`" in readme, f"setting {name} is not documented in README.md"
        assert description, f"setting {name} has no description"
    for name in ModelConfig.model_fields:
        assert f"`{name}`" in readme, f"model setting {name} is not documented in README.md"


def test_runtime_settings_are_one_value_and_ignore_bad_saved_values() -> None:
    from gpuwarden.runtime import RuntimeSettings

    base = RuntimeSettings.from_settings(load_settings(None, environ={}))
    assert base.to_dict() == {"memory_threshold_mib": 30, "refresh_interval_seconds": 300}
    saved = {"memory_threshold_mib": 500, "refresh_interval_seconds": 0, "other": 3}
    assert base.updated(saved).to_dict() == {"memory_threshold_mib": 500, "refresh_interval_seconds": 300}
    assert base.updated({"memory_threshold_mib": True, "refresh_interval_seconds": "60"}) == base
    assert base.updated({"memory_threshold_mib": 10_000_001}) == base
    assert base.to_dict() == {"memory_threshold_mib": 30, "refresh_interval_seconds": 300}  # never mutated


def test_unknown_environment_variables_warn_with_the_closest_setting(tmp_path: Path) -> None:
    env = {"GPUWARDEN_THRESHOLD": "3", "GPUWARDEN_CHROMIUM": "/usr/bin/chromium", "GPUWARDEN_PORT": "9001"}
    settings = load_settings(None, environ={**env, "XDG_CONFIG_HOME": str(tmp_path)})
    assert settings.port == 9001 and settings.memory_threshold_mib == 30  # nothing guessed, nothing stopped
    assert settings.notes == ("ignoring unknown environment variable GPUWARDEN_THRESHOLD; "
                              "did you mean GPUWARDEN_MEMORY_THRESHOLD_MIB?",)
    assert load_settings(None, environ={"GPUWARDEN_ZZZ": "1", "XDG_CONFIG_HOME": str(tmp_path)}).notes == (
        "ignoring unknown environment variable GPUWARDEN_ZZZ",)


def test_relative_paths_in_the_config_file_are_read_from_its_folder(tmp_path: Path) -> None:
    folder = tmp_path / "conf"
    folder.mkdir()
    config = write(folder / "g.toml", 'mock_smi = "gpu.txt"\nstate_dir = "state"\nnvidia_smi_path = "bin/smi"\n'
                                     '[[models]]\nname = "a"\ncommand = ["x"]\ncwd = "models"\n')
    settings = load_settings(config, environ={})
    assert settings.mock_smi == folder / "gpu.txt" and settings.state_dir == folder / "state"
    assert settings.nvidia_smi_path == folder / "bin" / "smi" and settings.models[0].cwd == folder / "models"
    absolute = load_settings(config, environ={"GPUWARDEN_STATE_DIR": str(tmp_path / "elsewhere")})
    assert absolute.state_dir == tmp_path / "elsewhere"  # the environment is not the file


def test_the_demo_lives_inside_the_configured_state_dir(tmp_path: Path) -> None:
    from gpuwarden.demo import demo_overrides

    assert demo_overrides(tmp_path / "mine")["state_dir"] == tmp_path / "mine" / "demo"


def test_a_relative_state_dir_is_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = write(tmp_path / "g.toml", 'state_dir = "state"\n')
    assert load_settings(Path("g.toml"), environ={}).state_dir == tmp_path / "state"
    assert load_settings(None, environ={"GPUWARDEN_STATE_DIR": "s2", "XDG_CONFIG_HOME": str(tmp_path / "c")}
                         ).state_dir == tmp_path / "s2"
    assert config.exists()
