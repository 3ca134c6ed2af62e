"""Variants from a real MLflow Model Registry: a tracking server (sqlite backend, local artifact
store) started once for the module, two registered versions of an iris model that answer
differently, and one gateway with two workers (and Redis) that serves `models:/iris@champion`,
follows the alias on every worker, begins one rollout per move, and keeps serving when the
registry stops (README "Sources and sinks")."""

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import pytest
import yaml
from support import (
    ADMIN,
    EARLY_MLFLOW,
    IRIS_ROWS,
    MODELS,
    GatewayProcess,
    MlflowServer,
    RedisServer,
    iris_body,
    wait_until,
)

from gateway.errors import ConfigError
from gateway.runtime import load_repository
from gateway.settings import load_settings

pytestmark = pytest.mark.e2e

# A registry that is down fails at once (MLflow's client would retry; the gateway's default 1).
NO_RETRIES = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}
WORKERS = 2
VERSIONS = {"1": MODELS / "iris" / "1" / "model.onnx", "2": MODELS / "iris" / "3" / "model.onnx"}


def register(client: Any, files: dict[str, Path]) -> None:
    """Log `files` (name -> local file) as a run's artifacts under model/ and register them as
    the next version of `iris`."""
    run = client.create_run("0")
    for name, source in files.items():
        client.log_artifact(run.info.run_id, str(source), artifact_path="model")
        assert source.name == name
    client.set_terminated(run.info.run_id)
    client.create_model_version("iris", f"{run.info.artifact_uri}/model", run.info.run_id)


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[MlflowServer, Any]]:
    """The registry: iris versions 1 and 2 (different answers), 3 (no ONNX file), 4 (two), 5
    (another model's inputs); `champion` and `challenger` point at version 1."""
    directory = tmp_path_factory.mktemp("mlflow")
    server = EARLY_MLFLOW.take() or MlflowServer(directory)
    server.start()  # if not started at collection (conftest): overlaps MLflow's import here
    from mlflow import MlflowClient

    notes = directory / "README.txt"
    notes.write_text("not a model")
    other = directory / "other.onnx"
    other.write_bytes(VERSIONS["2"].read_bytes())
    try:
        server.wait_ready()
        client = MlflowClient(server.url)
        client.create_registered_model("iris")
        for version in ("1", "2"):
            register(client, {"model.onnx": VERSIONS[version]})
        register(client, {"README.txt": notes})
        register(client, {"model.onnx": VERSIONS["1"], "other.onnx": other})
        register(client, {"model.onnx": MODELS / "mlp" / "1" / "model.onnx"})
        for alias in ("champion", "challenger"):
            client.set_registered_model_alias("iris", alias, "1")
        yield server, client
    finally:
        server.stop()


def config(server: MlflowServer, directory: Path, **variants: str) -> dict[str, Any]:
    return {
        "model_repository": str(MODELS),
        "data_dir": str(directory / "data"),
        "redis_url": (directory / "redis.url").read_text(),
        "mlflow_tracking_uri": server.url,
        "mlflow_poll_s": 0.2,
        "models": {
            "iris": {
                "variants": {name: {"path": path} for name, path in variants.items()},
                "routing": {"live": "champion"},
            },
            "ship": {  # a challenger shipped by a rollout whenever its alias moves
                "variants": {
                    "blue": {"path": "iris/1/model.onnx"},
                    "green": {"path": "models:/iris@challenger", "on_alias_change": "rollout"},
                },
                "routing": {"live": "blue"},
                "rollout": {"variant": "green", "steps": [{"pause": True}, {"canary": 0.5}]},
            },
        },
    }


@pytest.fixture(scope="module")
def directory(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The gateway's folder: its config file, log and data_dir."""
    return tmp_path_factory.mktemp("gateway")


@pytest.fixture(scope="module")
def gateway(registry: tuple[MlflowServer, Any], directory: Path) -> Iterator[GatewayProcess]:
    """`gateway serve --workers 2` with Redis: each worker follows the aliases on its own."""
    redis = RedisServer(directory / "redis")
    redis.start()
    (directory / "redis.url").write_text(redis.url)
    path = directory / "gateway.yaml"
    variants = {"champion": "models:/iris@champion", "pinned": "models:/iris/1"}
    path.write_text(yaml.safe_dump(config(registry[0], directory, **variants)))
    env = {"GATEWAY_ADMIN_TOKEN": "secret", **NO_RETRIES}
    process = GatewayProcess(path, WORKERS, env, directory / "log")
    try:
        process.wait_ready()
        yield process
    finally:
        process.stop()
        redis.stop()


def expected(version: str) -> list[float]:
    """Version `version`'s probabilities for IRIS_ROWS, straight from onnxruntime."""
    session = ort.InferenceSession(str(VERSIONS[version]), providers=["CPUExecutionProvider"])
    rows = np.array(IRIS_ROWS, dtype=np.float32)
    return [float(x) for x in session.run(["probabilities"], {"input": rows})[0].ravel()]


def answers(
    gateway: GatewayProcess, variant: str | None = None, model: str = "iris"
) -> list[float]:
    route = f"versions/{variant}/infer" if variant else "infer"
    response = httpx.post(f"{gateway.url}/v2/models/{model}/{route}", json=iris_body(IRIS_ROWS))
    assert response.status_code == 200, response.text
    outputs = {output["name"]: output["data"] for output in response.json()["outputs"]}
    return [float(x) for x in np.ravel(outputs["probabilities"])]


def same(got: list[float], version: str) -> bool:
    return bool(np.allclose(got, expected(version), rtol=1e-5, atol=1e-7))


def sources(gateway: GatewayProcess, model: str = "iris") -> dict[str, Any]:
    view = httpx.get(f"{gateway.url}/admin/models/{model}", headers=ADMIN).json()
    return dict(view["sources"])


def source_errors(gateway: GatewayProcess, variant: str) -> float:
    text = httpx.get(f"{gateway.url}/metrics").text
    found = re.search(
        rf'gateway_model_source_errors_total{{model="iris",variant="{variant}"}} (\S+)', text
    )
    return float(found[1]) if found else 0.0


def test_serves_the_alias_version_and_the_pinned_one(gateway: GatewayProcess) -> None:
    """models:/iris@champion and models:/iris/1 both answer with version 1's outputs, and the
    admin view shows each variant's URI and version."""
    assert not same(expected("2"), "1")  # the two versions can be told apart
    assert same(answers(gateway), "1")
    assert same(answers(gateway, "pinned"), "1")
    assert sources(gateway) == {
        "champion": {"uri": "models:/iris@champion", "version": "1", "error": None},
        "pinned": {"uri": "models:/iris/1", "version": "1", "error": None},
    }


@pytest.mark.parametrize(
    ("path", "says"),
    [
        ("models:/iris/9", "Model Version (name=iris, version=9) not found"),
        ("models:/iris@nobody", "alias nobody not found"),
        ("models:/absent@champion", "name=absent not found"),
        ("models:/iris/3", "version 3 has no .onnx file among its artifacts"),
        (
            "models:/iris/4",
            "version 4 has 2 .onnx files (model.onnx, other.onnx)",
        ),
        ("models:/iris/Production", "stages are deprecated in MLflow"),
    ],
)
def test_reload_refuses_what_the_registry_cannot_serve(
    gateway: GatewayProcess,
    registry: tuple[MlflowServer, Any],
    directory: Path,
    path: str,
    says: str,
) -> None:
    """A reload naming a missing version, alias or model, a version without exactly one ONNX
    file, or a stage is a 409 that says so; the same is a start-up error; serving goes on."""
    original = (directory / "gateway.yaml").read_text()
    changed = config(registry[0], directory, champion="models:/iris@champion", pinned=path)
    (directory / "gateway.yaml").write_text(yaml.safe_dump(changed))
    try:
        response = httpx.post(f"{gateway.url}/admin/reload", headers=ADMIN)
    finally:
        (directory / "gateway.yaml").write_text(original)
    assert response.status_code == 409
    assert says in response.json()["error"]
    assert same(answers(gateway, "pinned"), "1")
    with pytest.raises(
        ConfigError, match=re.escape(says)
    ):  # what `gateway serve` says before exit 2
        scratch = directory / "scratch.yaml"
        scratch.write_text(yaml.safe_dump({**changed, "data_dir": str(directory / "scratch")}))
        load_repository(load_settings(scratch, env={}))


def test_follows_the_alias_to_its_new_version(
    gateway: GatewayProcess, registry: tuple[MlflowServer, Any]
) -> None:
    """Moving champion to version 2 switches the live variant to version 2's answers on every
    worker with no failed request; the pinned variant stays at 1; challenger's move begins one
    rollout, whichever worker saw it first."""
    client = registry[1]
    client.set_registered_model_alias("iris", "champion", "2")
    client.set_registered_model_alias("iris", "challenger", "2")
    streak: list[bool] = []  # each answer on a new connection, which either worker may take

    def every_worker_on_2() -> bool:
        streak.append(same(answers(gateway), "2"))
        return len(streak) >= 20 and all(streak[-20:])

    wait_until(every_worker_on_2, timeout=30)
    assert same(answers(gateway, "pinned"), "1")
    assert sources(gateway)["champion"] == {
        "uri": "models:/iris@champion", "version": "2", "error": None
    }  # fmt: skip

    def rollout() -> dict[str, Any] | None:
        record = httpx.get(f"{gateway.url}/admin/models/ship/rollout", headers=ADMIN).json()
        first = record.get("decisions", [{}])[0].get("reason", "")
        return record if "models:/iris@challenger moved to version 2" in first else None

    record = wait_until(rollout, timeout=30)
    assert (record["plan"]["variant"], record["phase"]) == ("green", "Paused")
    # every worker has tried to begin it (each logs what it did), and only one did
    wait_until(lambda: gateway.output().count("rollout of green") >= WORKERS, timeout=30)
    assert gateway.output().count("began the rollout of green") == 1
    history = httpx.get(f"{gateway.url}/admin/models/ship/history", headers=ADMIN).json()
    begun = [e["action"] for e in history if "moved to version 2" in e["action"]]
    assert len(begun) == 1, begun
    assert same(answers(gateway, "green", model="ship"), "2")
    assert sources(gateway, "ship")["green"]["version"] == "2"


def test_a_version_that_cannot_be_served_is_not_followed(
    gateway: GatewayProcess, registry: tuple[MlflowServer, Any]
) -> None:
    """An alias moved to a version without an ONNX file, or one whose inputs differ from the
    live variant's, leaves the variant at its version, with the problem in the admin view and
    counted in gateway_model_source_errors_total; a version that failed to load is not loaded
    again at every poll."""
    errors = source_errors(gateway, "champion")
    registry[1].set_registered_model_alias("iris", "champion", "3")
    wait_until(lambda: ".onnx" in (sources(gateway)["champion"]["error"] or ""), timeout=30)
    assert source_errors(gateway, "champion") > errors
    assert sources(gateway)["champion"]["version"] == "2"
    assert same(answers(gateway), "2")
    registry[1].set_registered_model_alias("iris", "champion", "5")
    wait_until(lambda: "version 5 not loaded" in (sources(gateway)["champion"]["error"] or ""))
    assert "differ from live variant" in sources(gateway)["champion"]["error"]
    errors = source_errors(gateway, "champion")
    wait_until(lambda: gateway.output().count("version 5 not loaded") == WORKERS)
    assert same(answers(gateway), "2")
    registry[1].set_registered_model_alias("iris", "champion", "2")
    wait_until(lambda: sources(gateway)["champion"]["error"] is None, timeout=30)
    tried = re.findall(
        r"loaded model iris variant champion from \S+/iris/5/model.onnx", gateway.output()
    )
    assert len(tried) == WORKERS  # once each, not at every poll
    assert source_errors(gateway, "champion") - errors <= WORKERS


def test_a_registry_that_stops_changes_nothing_served(
    gateway: GatewayProcess,
    registry: tuple[MlflowServer, Any],
    directory: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With the registry stopped the gateway keeps answering with version 2, says so once in
    its log and counts every failed poll; a restart serves version 2 from the cache."""
    server = registry[0]
    server.stop()
    for variable, value in NO_RETRIES.items():
        monkeypatch.setenv(variable, value)
    errors = source_errors(gateway, "champion")
    wait_until(lambda: source_errors(gateway, "champion") >= errors + 3, timeout=30)
    assert same(answers(gateway), "2")
    wait_until(lambda: gateway.output().count("the MLflow registry cannot be asked") == WORKERS)
    assert "cannot be asked" in sources(gateway)["champion"]["error"]
    restarted = load_repository(load_settings(directory / "gateway.yaml", env={}))
    champion = restarted.sources[("iris", "champion")]
    assert (champion.version, champion.cached_only) == ("2", True)
    assert champion.path == directory / "data" / "mlflow" / "iris" / "2" / "model.onnx"
