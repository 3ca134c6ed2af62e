"""Shared fixtures: config files, a real redis-server, real gateway processes."""

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from support import (
    EARLY_MLFLOW,
    MODELS,
    GatewayProcess,
    RedisServer,
    base_config,
    make_failing_model,
    make_slow_model,
)

# --- config files -----------------------------------------------------------------------------


@pytest.fixture
def model_repo(tmp_path: Path) -> Path:
    """A model repository with the bundled models plus `iris/slow` and `iris/failing`."""
    repo = tmp_path / "models"
    shutil.copytree(MODELS, repo, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    make_slow_model(repo / "iris" / "slow" / "model.onnx")
    make_failing_model(repo / "iris" / "failing" / "model.onnx")
    return repo


@pytest.fixture
def write_config(tmp_path: Path, model_repo: Path) -> Callable[..., Path]:
    """Write a config file: the base config with top-level keys replaced by `overrides`."""

    def write(name: str = "gateway.yaml", **overrides: Any) -> Path:
        config = base_config(model_repo, tmp_path / "data")
        config.update(overrides)
        path = tmp_path / name
        path.write_text(yaml.safe_dump(config))
        return path

    return write


# --- redis-server ----------------------------------------------------------------------------


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


# --- gateway processes -----------------------------------------------------------------------


@pytest.fixture
def start_gateway(tmp_path: Path) -> Iterator[Callable[..., GatewayProcess]]:
    """Factory: start `gateway serve` with a config, workers and env; all stopped at the end."""
    started: list[GatewayProcess] = []

    def start(config: Path, workers: int = 1, **env: str) -> GatewayProcess:
        log = tmp_path / f"gateway-{len(started)}.log"
        gateway = GatewayProcess(config, workers, {"GATEWAY_ADMIN_TOKEN": "secret", **env}, log)
        started.append(gateway)
        gateway.wait_ready()
        return gateway

    yield start
    for gateway in started:
        gateway.stop()


def pytest_collection_finish(session: pytest.Session) -> None:
    """Start the MLflow registry now if its tests will run (support.EarlyMlflow)."""
    if any(item.path.name == "test_mlflow_source.py" for item in session.items):
        EARLY_MLFLOW.start()


def pytest_sessionfinish(session: pytest.Session) -> None:
    EARLY_MLFLOW.remove()
