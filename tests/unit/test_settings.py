"""Loading the config file: valid files, env overrides, and one clear message per error."""

from pathlib import Path

import pytest
import yaml

from gateway.errors import ConfigError
from gateway.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, config: object) -> Path:
    path = tmp_path / "gw.yaml"
    path.write_text(yaml.safe_dump(config) if not isinstance(config, str) else config)
    return path


def minimal(**routing: object) -> dict[str, object]:
    return {
        "models": {
            "iris": {
                "variants": {
                    "blue": {"path": "iris/1/model.onnx"},
                    "green": {"path": "iris/2/model.onnx"},
                },
                "routing": {"live": "blue", **routing},
            }
        }
    }


def test_bundled_config_loads_with_paths_resolved() -> None:
    """The repo's gateway.yaml is valid; relative paths resolve against its folder."""
    settings = load_settings(ROOT / "gateway.yaml", env={})
    assert settings.model_repository == ROOT / "models"
    assert settings.redis_url is None and settings.max_body_bytes == 8 * 1024 * 1024
    assert set(settings.models) == {"iris", "mlp"}


def test_env_overrides_redis_url_and_token(tmp_path: Path) -> None:
    """GATEWAY_REDIS_URL and GATEWAY_ADMIN_TOKEN override the file."""
    env = {"GATEWAY_REDIS_URL": "redis://127.0.0.1:1/0", "GATEWAY_ADMIN_TOKEN": "t"}
    settings = load_settings(write(tmp_path, minimal()), env=env)
    assert settings.redis_url == "redis://127.0.0.1:1/0"
    assert settings.admin_token is not None and settings.admin_token.get_secret_value() == "t"


@pytest.mark.parametrize(
    ("config", "field", "problem"),
    [
        ("models: [", "(top level)", "not valid YAML"),
        ("- 1\n- 2\n", "(top level)", "mapping"),
        ({"models": {}}, "models", "at least 1"),
        ({**minimal(), "request_timeout_s": -1}, "request_timeout_s", "greater than 0"),
        ({**minimal(), "max_body_bytes": "lots"}, "max_body_bytes", "valid integer"),
        ({**minimal(), "redis_url": "http://x"}, "redis_url", "redis://"),
        ({**minimal(), "surprise": 1}, "surprise", "Extra inputs"),
        (
            minimal(canary={"variant": "green", "weight": 1.5}),
            "models.iris.routing.canary.weight",
            "less than or equal to 1",
        ),
        (minimal(live="purple"), "models.iris", "routing.live names unknown variant 'purple'"),
        (
            minimal(canary={"variant": "blue", "weight": 0.1}),
            "models.iris",
            "must differ from routing.live",
        ),
        (
            minimal(shadows=[{"variant": "nope"}]),
            "models.iris",
            "routing.shadows names unknown variant",
        ),
        ({"models": {"bad name": minimal()["models"]["iris"]}}, "models.bad name", "pattern"),  # type: ignore[index]
    ],
)
def test_config_errors_name_file_field_and_problem(
    tmp_path: Path, config: object, field: str, problem: str
) -> None:
    """Every bad config raises ConfigError whose message names the file, the field and the problem."""
    path = write(tmp_path, config)
    with pytest.raises(ConfigError) as caught:
        load_settings(path, env={})
    message = str(caught.value)
    if field != "(top level)":
        assert f"{path}: {field}" in message
    assert str(path) in message and problem in message


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    """A config path that does not exist is reported as such."""
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_settings(tmp_path / "absent.yaml", env={})


def test_readme_config_example_is_valid() -> None:
    """The config shown in the README is a valid config (docs cannot drift from the model)."""
    readme = (ROOT / "README.md").read_text()
    block = readme.split("```yaml\n", 1)[1].split("```", 1)[0]
    settings = Settings.model_validate(yaml.safe_load(block))
    assert settings.models["iris"].routing.canary is not None
