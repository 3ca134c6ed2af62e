"""Event-stream inference over Redis Streams: a real redis-server and a real `gateway serve`
process consuming from it (README "Event streams").

One redis-server (append-only, so a restart keeps the streams and the group) and one gateway
for the module; each test writes its own messages and looks only at their answers.
"""

import json
import re
import shutil
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis
import yaml
from support import IRIS_ROWS, MODELS, GatewayProcess, RedisServer, iris_body, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.redis]

INPUT, OUTPUT, DEAD = "requests", "predictions", "requests.dead-letter"
GROUP = "iris-stream"


@pytest.fixture(scope="module")
def streams_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.persist = True  # appendfsync always: a kill -9 loses nothing acknowledged
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def gateway(
    tmp_path_factory: pytest.TempPathFactory, streams_redis: RedisServer
) -> Iterator[GatewayProcess]:
    tmp = tmp_path_factory.mktemp("gateway")
    shutil.copytree(MODELS, tmp / "models", ignore=shutil.ignore_patterns("*.py", "heavy", "mlp"))
    config = {
        "model_repository": str(tmp / "models"),
        "data_dir": str(tmp / "data"),
        "models": {
            "iris": {
                "variants": {
                    "blue": {"path": "iris/1/model.onnx"},
                    "green": {"path": "iris/2/model.onnx"},
                },
                "routing": {
                    "live": "blue",
                    "canary": {"variant": "green", "weight": 0.5},
                    "sticky_header": "x-user-id",
                },
            }
        },
        "consumers": [
            {
                "name": GROUP,
                "model": "iris",
                "input": INPUT,
                "output": OUTPUT,
                "redis_url": streams_redis.url,
                "count": 16,
                "claim_idle_ms": 1000,
                "max_deliveries": 3,
            },
        ],
    }
    (tmp / "gateway.yaml").write_text(yaml.safe_dump(config))
    process = GatewayProcess(tmp / "gateway.yaml", 1, {}, tmp / "gateway.log")
    try:
        process.wait_ready()
        yield process
    finally:
        process.stop()


@pytest.fixture
def client(streams_redis: RedisServer) -> Iterator[redis.Redis]:
    with redis.Redis.from_url(streams_redis.url) as connection:
        yield connection


def add(client: redis.Redis, body: Any, **headers: str) -> str:
    fields = {"body": body if isinstance(body, bytes) else json.dumps(body), **headers}
    return str(client.xadd(INPUT, fields).decode())  # type: ignore[union-attr]


def answers(client: redis.Redis, stream: str, ids: list[str]) -> dict[str, list[dict[str, str]]]:
    """The records of `stream` for the messages `ids`, by message id (each answer once, unless
    at-least-once answered a message twice)."""
    found: dict[str, list[dict[str, str]]] = {}
    for _, fields in client.xrange(stream):  # type: ignore[union-attr]
        record = {k.decode(): v.decode() for k, v in fields.items()}
        if record["message_id"] in ids:
            found.setdefault(record["message_id"], []).append(record)
    return found


def all_answered(
    client: redis.Redis, stream: str, ids: list[str]
) -> dict[str, list[dict[str, str]]]:
    found = answers(client, stream, ids)
    return found if len(found) == len(ids) else {}


def pending(client: redis.Redis) -> int:
    return int(client.xpending(INPUT, GROUP)["pending"])  # type: ignore[index]


def metric(gateway: GatewayProcess, name: str, **labels: str) -> float:
    """The value of one series on /metrics (0 when absent)."""
    text = httpx.get(f"{gateway.url}/metrics").text
    wanted = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    for line in text.splitlines():
        match = re.fullmatch(rf"{name}\{{(.*)\}} (\S+)", line)
        if match and ",".join(sorted(match.group(1).split(","))) == wanted:
            return float(match.group(2))
    return 0.0


def test_predictions_equal_http_answers_ids_carried(
    gateway: GatewayProcess, client: redis.Redis
) -> None:
    users = [f"user-{n}" for n in range(6)]
    bodies = [{**iris_body([IRIS_ROWS[n % 3]]), "id": f"match-{n}"} for n in range(6)]
    ids = [
        add(client, body, **{"x-user-id": user}) for body, user in zip(bodies, users, strict=True)
    ]
    found = wait_until(lambda: all_answered(client, OUTPUT, ids), timeout=10)
    for message_id, body, user in zip(ids, bodies, users, strict=True):
        [record] = found[message_id]
        http = httpx.post(
            f"{gateway.url}/v2/models/iris/infer", json=body, headers={"x-user-id": user}
        )
        assert record["body"] == http.text  # the same bytes: same variant (sticky), same encoder
        assert record["id"] == body["id"] == http.headers["x-request-id"]
        assert (
            record["variant"]
            == http.headers["x-gateway-variant"]
            == json.loads(record["body"])["model_version"]
        )
        assert record["role"] == http.headers["x-gateway-role"]
        assert record["revision"] == http.headers["x-gateway-revision"]
        assert record["model"] == "iris"
    wait_until(lambda: pending(client) == 0, timeout=5)  # acknowledged
    labels = {"source": "redis", "stream": INPUT, "group": GROUP}
    assert metric(gateway, "gateway_consumer_messages_total", **labels, outcome="predicted") >= 6
    wait_until(lambda: metric(gateway, "gateway_consumer_lag", **labels) == 0.0, timeout=5)


def test_canary_split_applies_to_stream_traffic(
    gateway: GatewayProcess, client: redis.Redis
) -> None:
    before = metric(
        gateway, "gateway_requests_total", model="iris", variant="green", role="canary", code="200"
    )
    ids = add_many(client, 200)  # no id in the body: the message's id is the request's
    found = wait_until(lambda: all_answered(client, OUTPUT, ids), timeout=15)
    records = [found[message_id][0] for message_id in ids]
    assert all(
        record["id"] == message_id
        for message_id, record in found.items()
        for record in found[message_id]
    )
    green = sum(record["variant"] == "green" for record in records)
    assert all(
        record["role"] == ("canary" if record["variant"] == "green" else "live")
        for record in records
    )
    assert 70 <= green <= 130  # weight 0.5 over 200 draws: mean 100, sd 7.1; bounds at 4.2 sd
    # stream answers are counted as requests are, so a rollout judges the canary on them too
    after = metric(
        gateway, "gateway_requests_total", model="iris", variant="green", role="canary", code="200"
    )
    assert after - before == green


def test_malformed_messages_go_to_dead_letter_and_never_block(
    gateway: GatewayProcess, client: redis.Redis
) -> None:
    wrong_input = {
        "inputs": [{"name": "petals", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]
    }
    bad = [
        add(client, b"{not json"),
        add(client, wrong_input, **{"x-user-id": "u1"}),
        str(client.xadd(INPUT, {"x-user-id": "u2"}).decode()),  # type: ignore[union-attr]  # no body
    ]
    good = add(client, {**iris_body(), "id": "after-the-bad-ones"})
    dead = wait_until(lambda: all_answered(client, DEAD, bad), timeout=10)
    assert (
        wait_until(lambda: all_answered(client, OUTPUT, [good]))[good][0]["id"]
        == "after-the-bad-ones"
    )
    not_json, unknown, no_body = (dead[message_id][0] for message_id in bad)
    assert not_json["status"] == "400" and "not valid JSON" in not_json["error"]
    assert not_json["body"] == "{not json" and not_json["model"] == "iris"
    assert unknown["status"] == "400" and "petals" in unknown["error"]
    assert json.loads(unknown["headers"]) == {"x-user-id": "u1"}
    assert json.loads(unknown["body"]) == wrong_input
    assert no_body["status"] == "400" and "no body" in no_body["error"]
    assert not answers(client, OUTPUT, bad)
    wait_until(lambda: pending(client) == 0, timeout=5)
    labels = {"source": "redis", "stream": INPUT, "group": GROUP}
    assert metric(gateway, "gateway_consumer_messages_total", **labels, outcome="dead_letter") >= 3


def test_messages_of_a_dead_consumer_are_claimed_poison_set_aside(
    gateway: GatewayProcess, client: redis.Redis
) -> None:
    """A consumer that died holding two messages: one delivered once (answered by the gateway
    once idle for claim_idle_ms), one already delivered 5 times (over max_deliveries 3: set
    aside unanswered, since answering it may be what kills consumers)."""
    ids = []
    for retries in (None, 5):
        with client.pipeline(transaction=True) as pipe:  # read by "dead" before the gateway sees it
            pipe.xadd(INPUT, {"body": json.dumps(iris_body())})
            pipe.xreadgroup(GROUP, "dead", {INPUT: ">"}, count=1)
            message_id = pipe.execute()[0].decode()
        claim = ["XCLAIM", INPUT, GROUP, "dead", 0, message_id, "IDLE", 60_000]
        client.execute_command(*claim, *(["RETRYCOUNT", retries] if retries else []))
        ids.append(message_id)
    abandoned, poison = ids
    assert wait_until(lambda: all_answered(client, OUTPUT, [abandoned]), timeout=10)
    dead = wait_until(lambda: all_answered(client, DEAD, [poison]), timeout=10)[poison][0]
    assert dead["status"] == "500" and "delivered 6 times" in dead["error"]
    assert not answers(client, OUTPUT, [poison])
    wait_until(lambda: pending(client) == 0, timeout=5)


def test_redis_killed_and_restarted_mid_stream(
    gateway: GatewayProcess, client: redis.Redis, streams_redis: RedisServer
) -> None:
    """Nothing lost: every message Redis accepted is answered at least once and acknowledged."""
    first = add_many(client, 300, "before")
    at_kill = wait_until(lambda: answers(client, OUTPUT, first), timeout=10)  # at work
    streams_redis.stop()  # kill -9, most likely with messages still waiting or in flight
    streams_redis.start()  # same port, same append-only file
    client.connection_pool.disconnect()
    second = add_many(client, 20, "after")
    found = wait_until(lambda: all_answered(client, OUTPUT, first + second), timeout=15)
    print(f"answered when Redis was killed: {len(at_kill)} of {len(first)}")
    assert {record["id"] for records in found.values() for record in records} == {
        *(f"before-{n}" for n in range(300)),
        *(f"after-{n}" for n in range(20)),
    }
    wait_until(lambda: pending(client) == 0, timeout=10)
    assert "is unreachable" in gateway.output() and "answers again" in gateway.output()


def add_many(client: redis.Redis, count: int, prefix: str | None = None) -> list[str]:
    with client.pipeline(transaction=False) as pipe:
        for n in range(count):
            body = {**iris_body([IRIS_ROWS[n % 3]]), **({"id": f"{prefix}-{n}"} if prefix else {})}
            pipe.xadd(INPUT, {"body": json.dumps(body)})
        return [message_id.decode() for message_id in pipe.execute()]
