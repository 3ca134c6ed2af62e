"""The `consumers:` settings (README "Event streams"): what a config may say, and the message a
wrong one gets; which consumers a process runs; a Redis entry read as a message."""

from pathlib import Path
from typing import Any

import pytest
import yaml
from support import MODELS

from gateway.cli import main
from gateway.errors import ConfigError
from gateway.settings import load_settings
from gateway.streams.config import select_consumers
from gateway.streams.redis_source import _message

IRIS = {"variants": {"blue": {"path": "iris/1/model.onnx"}}, "routing": {"live": "blue"}}
REDIS = {"name": "scores", "model": "iris", "input": "requests", "output": "predictions"}
KAFKA = {**REDIS, "name": "events", "source": "kafka", "bootstrap_servers": "k:9092"}


def settings(tmp_path: Path, *consumers: dict[str, Any], **top: Any) -> Any:
    config = {
        "model_repository": str(MODELS),
        "models": {"iris": IRIS},
        "consumers": list(consumers),
        **top,
    }
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    return load_settings(path, env={})


def test_defaults_and_derived_names(tmp_path: Path) -> None:
    [consumer] = settings(tmp_path, REDIS, redis_url="redis://r:6379/0").consumers
    assert consumer.source == "redis" and consumer.group_name == "scores"
    assert consumer.dead_letter_stream == "requests.dead-letter"
    assert (consumer.start, consumer.count, consumer.serve) == ("earliest", 32, True)
    [kafka] = settings(tmp_path, {**KAFKA, "group": "g", "dead_letter": "dlq"}).consumers
    assert kafka.group_name == "g" and kafka.dead_letter_stream == "dlq"


@pytest.mark.parametrize(
    ("consumers", "top", "message"),
    [
        (
            [{**REDIS, "model": "nope"}],
            {"redis_url": "redis://r"},
            "model 'nope' is not served (known: iris)",
        ),
        ([REDIS], {}, "consumer 'scores': source redis needs redis_url"),
        ([REDIS, REDIS], {"redis_url": "redis://r"}, "consumer 'scores' is configured twice"),
        ([{**KAFKA, "bootstrap_servers": None}], {}, "source kafka needs bootstrap_servers"),
        ([{**KAFKA, "redis_url": "redis://r"}], {}, "redis_url: not for source kafka"),
        (
            [{**REDIS, "kafka": {"acks": "all"}}],
            {"redis_url": "redis://r"},
            "kafka: not for source redis",
        ),
        ([{**REDIS, "output": "requests"}], {"redis_url": "redis://r"}, "three different streams"),
        ([{**REDIS, "redis_url": "http://r"}], {}, "must start with redis://"),
        (
            [{**REDIS, "count": "32"}],
            {"redis_url": "redis://r"},
            "consumers.0.count: Input should be a valid integer",
        ),
        ([{**REDIS, "count": 0}], {"redis_url": "redis://r"}, "greater than or equal to 1"),
        ([{**REDIS, "input": "has space"}], {"redis_url": "redis://r"}, "consumers.0.input"),
        ([{**REDIS, "source": "rabbit"}], {"redis_url": "redis://r"}, "'redis' or 'kafka'"),
        ([{**REDIS, "topic": "x"}], {"redis_url": "redis://r"}, "Extra inputs are not permitted"),
    ],
)
def test_a_wrong_consumer_stops_start_up_with_a_message(
    tmp_path: Path, consumers: list[dict[str, Any]], top: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=r"gateway\.yaml: consumers") as error:
        settings(tmp_path, *consumers, **top)
    assert message in str(error.value)


def test_the_gateway_redis_url_serves_consumers_too(tmp_path: Path) -> None:
    """GATEWAY_REDIS_URL (or redis_url) is the default Redis of every Redis consumer."""
    path = tmp_path / "gateway.yaml"
    path.write_text(
        yaml.safe_dump(
            {"model_repository": str(MODELS), "models": {"iris": IRIS}, "consumers": [REDIS]}
        )
    )
    assert (
        load_settings(path, env={"GATEWAY_REDIS_URL": "redis://r:6379/0"}).consumers[0].redis_url
        is None
    )


def test_which_consumers_a_process_runs(tmp_path: Path) -> None:
    both = settings(tmp_path, REDIS, {**KAFKA, "serve": False}, redis_url="redis://r").consumers
    assert [c.name for c in select_consumers(both, None)] == ["scores"]  # gateway serve
    assert [c.name for c in select_consumers(both, [])] == ["scores", "events"]  # consume: all
    assert [c.name for c in select_consumers(both, ["events"])] == ["events"]
    with pytest.raises(
        ConfigError,
        match=r"no consumer named 'other' in the settings \(configured: events, scores\)",
    ):
        select_consumers(both, ["other", "events"])


def test_a_redis_entry_is_a_message() -> None:
    message = _message((b"1-0", {b"body": b"{}", b"X-User-Id": b"u1", b"x-request-id": b"r"}))
    assert message == ("1-0", b"{}", {b"x-user-id": b"u1", b"x-request-id": b"r"})
    assert _message((b"2-0", {b"x-user-id": b"u1"})).body is None  # answered with a 400


def test_gateway_consume_refuses_a_config_it_cannot_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Exit 2 with the reason, before any model is loaded."""
    settings(tmp_path)  # writes gateway.yaml: no consumers
    config = str(tmp_path / "gateway.yaml")
    assert main(["consume", "--config", config]) == 2
    assert "consumers: none configured" in capsys.readouterr().err
    settings(tmp_path, REDIS, redis_url="redis://r")
    assert main(["consume", "--config", config, "--consumer", "other"]) == 2
    assert "no consumer named 'other'" in capsys.readouterr().err
