"""Event-stream inference over Kafka: librdkafka's built-in mock cluster (`test.mock.num.brokers`,
in this test process, reached over TCP) and a real `gateway consume` process (README "Event
streams"). No broker package can be installed here; the mock speaks the Kafka protocol,
consumer groups and offset commits included.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import confluent_kafka as kafka
import httpx
import pytest
import yaml
from support import (
    IRIS_LABELS,
    IRIS_ROWS,
    MODELS,
    free_port,
    iris_body,
    make_slow_model,
    wait_until,
)

pytestmark = pytest.mark.e2e

IRIS_IN, IRIS_OUT, IRIS_DEAD = "iris-requests", "iris-predictions", "iris-requests.dead-letter"
SLOW_IN, SLOW_OUT = "slow-requests", "slow-predictions"


@pytest.fixture(scope="module")
def bootstrap() -> Iterator[str]:
    """The mock cluster's brokers: it lives as long as the client that made it."""
    owner = kafka.Producer({"test.mock.num.brokers": 1, "logger": _quiet()})
    brokers = owner.list_topics(timeout=5).brokers.values()
    servers = ",".join(f"{broker.host}:{broker.port}" for broker in brokers)
    for topic in (IRIS_IN, IRIS_OUT, IRIS_DEAD, SLOW_IN, SLOW_OUT):  # asked for, a topic is made
        assert owner.list_topics(topic, timeout=5).topics[topic].error is None
    yield servers
    owner.flush(1)


class Consume:
    """`gateway consume` as a real process, with health and /metrics on a free port."""

    def __init__(self, config: Path, log: Path) -> None:
        self.url = f"http://127.0.0.1:{free_port()}"
        self.log = log
        command = [sys.executable, "-m", "gateway", "consume", "--config", str(config),
                   "--port", self.url.rsplit(":", 1)[1]]  # fmt: skip
        with log.open("wb") as out:
            self.process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)

    def metric(self, name: str, **labels: str) -> float:
        text = httpx.get(f"{self.url}/metrics").text
        wanted = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
        for line in text.splitlines():
            match = re.fullmatch(rf"{name}(?:\{{(.*)\}})? (\S+)", line)
            if match and ",".join(sorted((match.group(1) or "").split(","))).strip(",") == wanted:
                return float(match.group(2))
        return 0.0


@pytest.fixture(scope="module")
def consume(tmp_path_factory: pytest.TempPathFactory, bootstrap: str) -> Iterator[Consume]:
    tmp = tmp_path_factory.mktemp("consume")
    shutil.copytree(MODELS / "iris" / "1", tmp / "models" / "iris" / "1")
    make_slow_model(tmp / "models" / "slow" / "1" / "model.onnx", layers=2)  # about 0.07 s a run
    # KIP-848's consumer group protocol: the mock assigns partitions at once, where the classic
    # protocol waits out its initial rebalance delay (3 s)
    kafka_options = {
        "bootstrap_servers": bootstrap,
        "source": "kafka",
        "kafka": {"group.protocol": "consumer"},
    }
    config = {
        "model_repository": str(tmp / "models"),
        "data_dir": str(tmp / "data"),
        "models": {
            "iris": {
                "variants": {"blue": {"path": "iris/1/model.onnx"}},
                "routing": {"live": "blue"},
            },
            "slow": {"variants": {"v1": {"path": "slow/1/model.onnx"}}, "routing": {"live": "v1"}},
        },
        "consumers": [
            {
                "name": "iris-kafka",
                "model": "iris",
                "input": IRIS_IN,
                "output": IRIS_OUT,
                **kafka_options,
            },
            {
                "name": "slow-kafka",
                "model": "slow",
                "input": SLOW_IN,
                "output": SLOW_OUT,
                "count": 1,
                **kafka_options,
            },
        ],
    }
    (tmp / "gateway.yaml").write_text(yaml.safe_dump(config))
    process = Consume(tmp / "gateway.yaml", tmp / "consume.log")
    try:
        wait_until(lambda: _ready(process), timeout=60, interval=0.1)
        yield process
    finally:
        if process.process.poll() is None:
            process.process.kill()
            process.process.wait()


def _ready(process: Consume) -> bool:
    if process.process.poll() is not None:
        raise AssertionError(f"gateway consume exited:\n{process.log.read_text()}")
    return httpx.get(f"{process.url}/v2/health/ready", timeout=2).status_code == 200


def _quiet() -> Any:
    import logging

    logger = logging.getLogger("mock-kafka")
    logger.setLevel(logging.ERROR)
    return logger


def produce(
    bootstrap: str,
    topic: str,
    messages: list[tuple[bytes | None, dict[str, str]]],
    partition: int = -1,
) -> None:
    producer = kafka.Producer({"bootstrap.servers": bootstrap, "logger": _quiet()})
    for value, headers in messages:
        producer.produce(topic, value, headers=list(headers.items()), partition=partition)
    assert producer.flush(10) == 0


def read_all(bootstrap: str, topic: str, count: int) -> list[Any]:
    """Every message of `topic` once `count` of them are there (partitions assigned by hand,
    so no group is joined)."""
    reader = kafka.Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "test-reader", "logger": _quiet()}
    )
    try:
        partitions = reader.list_topics(topic, timeout=10).topics[topic].partitions
        reader.assign([kafka.TopicPartition(topic, p, kafka.OFFSET_BEGINNING) for p in partitions])
        found: list[Any] = []

        def more() -> bool:
            found.extend(m for m in reader.consume(100, 0.2) if m.error() is None)
            return len(found) >= count

        wait_until(more, timeout=15)
        return found
    finally:
        reader.close()


def committed(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    """The group's committed offset of each partition of `topic` (-1001: none)."""
    client = kafka.Consumer({"bootstrap.servers": bootstrap, "group.id": group, "logger": _quiet()})
    try:
        partitions = client.list_topics(topic, timeout=10).topics[topic].partitions
        offsets = client.committed([kafka.TopicPartition(topic, p) for p in partitions], timeout=10)
        return {offset.partition: offset.offset for offset in offsets}
    finally:
        client.close()


def headers_of(message: Any) -> dict[str, str]:
    return {name: value.decode() for name, value in message.headers() or []}


def test_predictions_dead_letters_and_lag(consume: Consume, bootstrap: str) -> None:
    good = [
        (json.dumps({**iris_body([row]), "id": f"k-{n}"}).encode(), {})
        for n, row in enumerate(IRIS_ROWS)
    ]
    no_id = (json.dumps(iris_body()).encode(), {"x-request-id": "from-header"})
    poison: list[tuple[bytes | None, dict[str, str]]] = [(b"[1, 2", {"x-user-id": "u"}), (None, {})]
    produce(bootstrap, IRIS_IN, [*good[:2], *poison, good[2], no_id])
    predictions = {headers_of(m)["id"]: m for m in read_all(bootstrap, IRIS_OUT, 4)}
    assert set(predictions) == {"k-0", "k-1", "k-2", "from-header"}
    for n, label in enumerate(IRIS_LABELS):
        record = predictions[f"k-{n}"]
        body = json.loads(record.value())
        assert body["id"] == f"k-{n}" and body["model_version"] == "blue"
        assert next(o for o in body["outputs"] if o["name"] == "label")["data"] == [label]
        assert headers_of(record) | {"message_id": ""} == {
            "id": f"k-{n}",
            "model": "iris",
            "variant": "blue",
            "role": "live",
            "revision": "1",
            "message_id": "",
        }
        assert re.fullmatch(rf"{IRIS_IN}/[0-3]/\d+", headers_of(record)["message_id"])
    dead = sorted(read_all(bootstrap, IRIS_DEAD, 2), key=lambda m: m.value() or b"")
    assert [m.value() for m in dead] == [b"", b"[1, 2"]
    no_body, not_json = (headers_of(m) for m in dead)
    assert no_body["status"] == "400" and "no body" in no_body["error"]
    assert not_json["status"] == "400" and "not valid JSON" in not_json["error"]
    assert json.loads(not_json["headers"]) == {"x-user-id": "u"}
    labels = {"source": "kafka", "stream": IRIS_IN, "group": "iris-kafka"}
    # every partition committed past what was answered: the group's lag falls to 0
    done = lambda: sum(max(0, o) for o in committed(bootstrap, "iris-kafka", IRIS_IN).values())  # noqa: E731
    wait_until(lambda: done() == 6, timeout=10)
    wait_until(lambda: consume.metric("gateway_consumer_lag", **labels) == 0.0, timeout=10)
    assert consume.metric("gateway_consumer_messages_total", **labels, outcome="predicted") == 4
    assert consume.metric("gateway_consumer_messages_total", **labels, outcome="dead_letter") == 2


def test_sigterm_finishes_the_message_in_flight(consume: Consume, bootstrap: str) -> None:
    """SIGTERM mid-stream (the slow model's answers take most of the consumer's time, so one is
    most likely in flight): the process exits 0; what was answered was committed, and only
    that (nothing produced and left uncommitted, nothing committed unanswered); the messages
    not read yet stay for the group."""
    messages = [(json.dumps({**iris_body(), "id": f"s-{n}"}).encode(), {}) for n in range(40)]
    produce(bootstrap, SLOW_IN, messages, partition=0)  # in order, one after another
    labels = {"source": "kafka", "stream": SLOW_IN, "group": "slow-kafka"}
    wait_until(lambda: consume.metric("gateway_consumer_lag", **labels) >= 2, timeout=15)
    wait_until(
        lambda: consume.metric("gateway_consumer_messages_total", **labels, outcome="predicted")
    )
    os.kill(consume.process.pid, signal.SIGTERM)
    assert consume.process.wait(timeout=20) == 0
    answered = committed(bootstrap, "slow-kafka", SLOW_IN)[0]
    assert 1 <= answered < 40
    predictions = read_all(bootstrap, SLOW_OUT, answered)
    assert sorted(headers_of(m)["id"] for m in predictions) == sorted(
        f"s-{n}" for n in range(answered)
    )
    assert "Application shutdown complete" in consume.log.read_text()
