"""`models:/` variant paths: parsing MLflow's URI syntax, the settings that go with them, the
version cache, and resolving while the registry cannot be asked (a real MLflow client against a
closed port)."""

import logging
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from support import MODELS, free_port

from gateway.errors import ConfigError
from gateway.runtime import load_repository
from gateway.settings import Settings, load_settings
from gateway.sources.cache import SourceCache
from gateway.sources.uri import ModelUri, parse_model_uri

IRIS = MODELS / "iris" / "1" / "model.onnx"


@pytest.mark.parametrize(
    ("uri", "parsed"),
    [
        ("models:/iris@champion", ModelUri("iris", alias="champion")),
        ("models:/iris/3", ModelUri("iris", version="3")),
        ("models:/iris/007", ModelUri("iris", version="7")),
        ("models:/fraud model@v-next", ModelUri("fraud model", alias="v-next")),
        ("models:/a@b@challenger", ModelUri("a@b", alias="challenger")),
    ],
)
def test_registry_uris_parse_as_mlflow_writes_them(uri: str, parsed: ModelUri) -> None:
    """NAME@ALIAS follows an alias, NAME/VERSION pins one (leading zeros dropped, as MLflow
    reads a version as a number)."""
    assert parse_model_uri(uri) == parsed
    assert parse_model_uri(str(parsed)) == parsed


@pytest.mark.parametrize(
    ("uri", "says"),
    [
        ("models:/iris/Production", "stages are deprecated"),
        ("models:/iris/staging", "models:/iris@ALIAS"),
        ("models:/iris/latest", "'latest' changes"),
        ("models:/m-4f2a9c", "logged model's id"),
        ("models:/iris/1/model.onnx", "artifact path"),
        ("models:/iris@", "expected models:/NAME@ALIAS"),
        ("models:/@champion", "expected models:/NAME@ALIAS"),
        ("models:/../1", "registered model's name"),
        ("models:iris/1", "not a registry URI"),
        ("models://iris/1", "not a registry URI"),
        ("models:/", "expected models:/NAME@ALIAS"),
        ("models:/iris/", "expected models:/NAME/VERSION"),
        ("models:/iris/-1", "a version is a positive integer"),
        ("models:/iris/0", "a version is a positive integer"),
        ("models:/ iris@champion", "expected models:/NAME@ALIAS"),
        ("models:/iris @champion", "expected models:/NAME@ALIAS"),
        ("models:/iris /1", "registered model's name"),
    ],
)
def test_other_uris_are_refused_saying_what_to_write(uri: str, says: str) -> None:
    """Stages, `latest`, logged-model ids, artifact paths and malformed URIs are refused."""
    with pytest.raises(ValueError, match=says.replace("(", r"\(").replace(".", r"\.")):
        parse_model_uri(uri)


def _config(tmp_path: Path, variants: dict[str, Any], **top: Any) -> Path:
    config = {
        "model_repository": str(MODELS),
        "data_dir": str(tmp_path / "data"),
        "models": {"iris": {"variants": variants, "routing": {"live": "blue"}}},
        **top,
    }
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_a_stage_uri_is_a_config_error_naming_the_variant(tmp_path: Path) -> None:
    """A stage in a variant's path stops start-up with the file, the field and the fix."""
    path = _config(
        tmp_path, {"blue": {"path": "models:/iris/Production"}}, mlflow_tracking_uri="http://x"
    )
    with pytest.raises(ConfigError, match=r"models\.iris\.variants\.blue\.path: .*alias"):
        load_settings(path, env={})


def test_registry_paths_need_a_tracking_uri_from_the_file_or_mlflows_variable(
    tmp_path: Path,
) -> None:
    """Without mlflow_tracking_uri nor MLFLOW_TRACKING_URI a models:/ path is refused; the
    variable fills in for the file, and the file wins over it (as MLflow's client does)."""
    variants = {"blue": {"path": "models:/iris@champion"}}
    with pytest.raises(ConfigError, match="needs mlflow_tracking_uri"):
        load_settings(_config(tmp_path, variants), env={})
    settings = load_settings(
        _config(tmp_path, variants), env={"MLFLOW_TRACKING_URI": "http://env:5000"}
    )
    assert settings.mlflow_tracking_uri == "http://env:5000"
    path = _config(tmp_path, variants, mlflow_tracking_uri="http://file:5000")
    assert (
        load_settings(path, env={"MLFLOW_TRACKING_URI": "http://env:5000"}).mlflow_tracking_uri
        == "http://file:5000"
    )
    assert load_settings(path, env={}).mlflow_poll_s == 30.0


@pytest.mark.parametrize(
    ("variants", "extra", "says"),
    [
        (
            {"blue": {"path": "iris/1/model.onnx", "on_alias_change": "reload"}},
            {},
            "models:/NAME@ALIAS paths only",
        ),
        (
            {"blue": {"path": "models:/iris/2", "on_alias_change": "rollout"}},
            {},
            "models:/NAME@ALIAS paths only",
        ),
        (
            {"blue": {"path": "models:/iris@champion", "on_alias_change": "replace"}},
            {},
            "'reload' or 'rollout'",
        ),
        (
            {
                "blue": {"path": "iris/1/model.onnx"},
                "green": {"path": "models:/iris@challenger", "on_alias_change": "rollout"},
            },
            {},
            "rollout needs the model's rollout plan to ship it",
        ),
        (
            {
                "blue": {"path": "iris/1/model.onnx"},
                "green": {"path": "models:/iris@challenger", "on_alias_change": "rollout"},
                "mlp": {"path": "iris/3/model.onnx"},
            },
            {"rollout": {"variant": "mlp", "steps": [{"canary": 0.1}]}},
            "rollout.variant: green",
        ),
    ],
)
def test_on_alias_change_is_checked(
    tmp_path: Path, variants: dict[str, Any], extra: dict[str, Any], says: str
) -> None:
    """on_alias_change belongs to alias paths, and `rollout` to the variant the plan ships."""
    path = _config(tmp_path, variants, mlflow_tracking_uri="http://x")
    raw = yaml.safe_load(path.read_text())
    raw["models"]["iris"].update(extra)
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=says.replace("(", r"\(").replace(".", r"\.")):
        load_settings(path, env={})


def test_the_cache_stores_versions_and_remembers_aliases_atomically(tmp_path: Path) -> None:
    """A stored version is a whole file at NAME/VERSION/model.onnx (odd names percent-encoded);
    an alias is recalled only while its version is cached; no temporary file is left."""
    cache = SourceCache(tmp_path / "mlflow")
    alias = ModelUri("fraud/ model", alias="champion")
    assert cache.recall(alias) is None
    stored = cache.store("fraud/ model", "4", IRIS)
    assert stored == tmp_path / "mlflow" / "fraud%2F%20model" / "4" / "model.onnx"
    assert stored.read_bytes() == IRIS.read_bytes()
    cache.remember(alias, "4")
    cache.remember(alias, "5")  # replaces the note: version 5 is not cached, so nothing to recall
    assert cache.recall(alias) is None
    cache.remember(alias, "4")
    assert cache.recall(alias) == "4"
    assert not [p for p in (tmp_path / "mlflow").rglob(".*") if p.is_file()]


def test_an_unreachable_registry_serves_the_remembered_version_or_stops_start_up(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the registry down, an alias loads the version it last resolved to, from the cache,
    and the log says so; a pinned version already cached needs no registry; anything not
    cached is a start-up error naming the variant and the cache."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # a closed port: no retry needed
    down = f"http://127.0.0.1:{free_port()}"
    variants = {"blue": {"path": "models:/iris@champion"}, "green": {"path": "models:/iris/2"}}
    path = _config(tmp_path, variants, mlflow_tracking_uri=down)
    with pytest.raises(
        ConfigError,
        match=r"model 'iris', variant 'blue': .* cannot be asked and no version of models:/iris@champion is cached",
    ):
        load_repository(load_settings(path, env={}))
    cache = SourceCache(tmp_path / "data" / "mlflow")
    for version, source in (("1", IRIS), ("2", MODELS / "iris" / "2" / "model.onnx")):
        cache.store("iris", version, source)
    cache.remember(ModelUri("iris", alias="champion"), "1")
    with caplog.at_level(logging.WARNING, logger="gateway.sources.resolve"):
        repository = load_repository(load_settings(path, env={}))
    blue, green = repository.sources[("iris", "blue")], repository.sources[("iris", "green")]
    assert (blue.version, blue.cached_only, green.version, green.cached_only) == (
        "1",
        True,
        "2",
        False,
    )
    assert repository.session("iris", "blue").path == cache.file("iris", "1")
    assert "serves version 1, the one it last resolved to, from the cache" in caplog.text
    shutil.rmtree(cache.file("iris", "2").parent)
    with pytest.raises(
        ConfigError, match=r"variant 'green': .* no version of models:/iris/2 is cached"
    ):
        load_repository(load_settings(path, env={}))


def test_readme_registry_example_is_valid() -> None:
    """The README's MLflow Model Registry config is a valid config."""
    readme = (MODELS.parent / "README.md").read_text()
    section = readme.split("### MLflow Model Registry", 1)[1]
    block = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    settings = Settings.model_validate(yaml.safe_load(block))
    variants = settings.models["iris"].variants
    assert variants["challenger"].on_alias_change == "rollout"
    assert variants["pinned"].path == "models:/iris/3"


def test_a_tracking_store_mlflow_refuses_is_a_start_up_error(tmp_path: Path) -> None:
    """A file:// tracking URI (a store MLflow 3 keeps in maintenance mode and refuses) stops
    start-up with MLflow's reason, as a ConfigError naming the URI, not a traceback."""
    store = f"file://{tmp_path / 'mlruns'}"
    path = _config(tmp_path, {"blue": {"path": "models:/iris@champion"}}, mlflow_tracking_uri=store)
    with pytest.raises(ConfigError, match=rf"mlflow_tracking_uri '{store}': .*file"):
        load_repository(load_settings(path, env={}))
