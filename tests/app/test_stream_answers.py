"""A stream message answered in-process through the real Gateway and InferenceService
(gateway.streams.predict): the same answers, ids, errors and metrics as an HTTP request."""

import asyncio
import json
import shutil
from collections.abc import AsyncIterator

import numpy as np
import pytest
import pytest_asyncio
import yaml
from prometheus_client import CollectorRegistry
from support import IRIS_LABELS, IRIS_ROWS, MODELS, iris_body, make_slow_model, wait_until_async

from gateway.lifecycle import Gateway
from gateway.settings import load_settings
from gateway.streams.predict import Message, Record, answer

pytestmark = pytest.mark.asyncio(loop_scope="module")  # one gateway for the module
MAX_BODY = 1 << 20


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def gateway(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Gateway]:
    """iris (blue live, green its shadow) and `queued`: a slow model (about 0.07 s a run) whose
    queue holds one."""
    tmp = tmp_path_factory.mktemp("streams")
    for version in ("1", "2"):
        shutil.copytree(MODELS / "iris" / version, tmp / "models" / "iris" / version)
    make_slow_model(tmp / "models" / "slow" / "model.onnx", layers=2)
    config = {
        "model_repository": str(tmp / "models"),
        "data_dir": str(tmp / "data"),
        "models": {
            "iris": {
                "variants": {
                    "blue": {"path": "iris/1/model.onnx"},
                    "green": {"path": "iris/2/model.onnx"},
                },
                "routing": {"live": "blue", "shadows": [{"variant": "green", "sample": 1.0}]},
            },
            "queued": {
                "variants": {"v": {"path": "slow/model.onnx", "max_queue_size": 1}},
                "routing": {"live": "v"},
            },
        },
    }
    (tmp / "gateway.yaml").write_text(yaml.safe_dump(config))
    running = Gateway(load_settings(tmp / "gateway.yaml"), CollectorRegistry())
    await running.start()
    yield running
    await running.stop()


async def ask(gateway: Gateway, body: bytes | None, model: str = "iris", **headers: str) -> Record:
    message = Message("1700000000000-0", body, {k.encode(): v.encode() for k, v in headers.items()})
    return await answer(gateway.service, model, message, MAX_BODY, retry_s=0.0)


def text(record: Record) -> dict[str, str]:
    return {name: value.decode() for name, value in record.headers.items()}


async def test_prediction_record(gateway: Gateway) -> None:
    body = json.dumps({**iris_body(IRIS_ROWS), "id": "p-1"}).encode()
    record = await ask(gateway, body)
    assert not record.dead_letter and record.status == 200
    assert text(record) == {
        "id": "p-1", "model": "iris", "variant": "blue", "role": "live", "revision": "1",
        "message_id": "1700000000000-0",
    }  # fmt: skip
    answer_body = json.loads(record.body)  # the v2 response, as HTTP answers it
    assert answer_body["model_name"] == "iris" and answer_body["model_version"] == "blue"
    assert answer_body["id"] == "p-1"
    label = next(output for output in answer_body["outputs"] if output["name"] == "label")
    assert label == {"name": "label", "datatype": "INT64", "shape": [3], "data": IRIS_LABELS}


@pytest.mark.parametrize(
    ("headers", "body_id", "expected"),
    [
        ({"x-request-id": "from-header"}, "from-body", "from-header"),
        ({}, "from-body", "from-body"),
        ({}, None, "1700000000000-0"),  # the message's own id
        ({"x-request-id": "has space"}, "has space too", "1700000000000-0"),  # unsafe: skipped
    ],
)
async def test_request_id_header_then_body_then_message(
    gateway: Gateway, headers: dict[str, str], body_id: str | None, expected: str
) -> None:
    body = {**iris_body(), **({"id": body_id} if body_id else {})}
    record = await ask(gateway, json.dumps(body).encode(), **headers)
    assert text(record)["id"] == expected
    assert json.loads(record.body)["id"] == (body_id or expected)  # the body's id is echoed as is


async def test_binary_tensors_both_ways(gateway: Gateway) -> None:
    rows = np.array(IRIS_ROWS, dtype=np.float32)
    header = json.dumps({
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [3, 4],
                    "parameters": {"binary_data_size": rows.nbytes}}],
        "outputs": [{"name": "label", "parameters": {"binary_data": True}}],
    }).encode()  # fmt: skip
    record = await ask(
        gateway, header + rows.tobytes(), **{"inference-header-content-length": str(len(header))}
    )
    length = int(record.headers["inference-header-content-length"])
    labels = np.frombuffer(record.body[length:], dtype=np.int64)
    assert labels.tolist() == [0, 2, 1]


@pytest.mark.parametrize(
    ("body", "model", "status", "error"),
    [
        (b"{not json", "iris", 400, "not valid JSON"),
        (None, "iris", 400, "no body"),
        (b"x" * (MAX_BODY + 1), "iris", 413, "max_body_bytes"),
        (json.dumps(iris_body()).encode(), "nope", 404, "nope"),
        (
            json.dumps(
                {
                    "inputs": [
                        {"name": "input", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]}
                    ]
                }
            ).encode(),
            "iris",
            400,
            "shape",
        ),
    ],
)
async def test_dead_letter_carries_the_message_and_its_error(
    gateway: Gateway, body: bytes | None, model: str, status: int, error: str
) -> None:
    record = await ask(gateway, body, model, **{"x-user-id": "u-7"})
    headers = text(record)
    assert record.dead_letter and record.status == status
    assert headers["status"] == str(status) and error in headers["error"]
    assert record.body == (body or b"") and headers["model"] == model
    assert headers["message_id"] == "1700000000000-0"
    assert json.loads(headers["headers"]) == {"x-user-id": "u-7"}


async def test_counted_as_requests_are(gateway: Gateway) -> None:
    def count(code: str) -> float:
        return gateway.metrics.requests.mine().get(("iris", "blue", "live", code), [0.0])[0]

    before = count("200"), count("400")
    await ask(gateway, json.dumps(iris_body()).encode())
    await ask(gateway, b"[]")
    assert (count("200"), count("400")) == (before[0] + 1, before[1] + 1)


async def test_a_full_queue_is_asked_again_until_retry_s(gateway: Gateway) -> None:
    """429s (the variant's queue of one is full) are retried for up to retry_s; with no time
    to retry they go to the dead-letter stream with their 429."""
    body = json.dumps(iris_body()).encode()

    async def burst(retry_s: float) -> list[Record]:
        messages = [Message(f"m-{n}", body, {}) for n in range(5)]
        return await asyncio.gather(
            *(answer(gateway.service, "queued", m, MAX_BODY, retry_s) for m in messages)
        )

    refused = [r for r in await burst(0.0) if r.dead_letter]
    assert refused and all(r.status == 429 for r in refused)
    assert all(not r.dead_letter for r in await burst(10.0))


async def test_shadow_records_join_with_the_message_id(gateway: Gateway) -> None:
    """The message goes to the model's shadows too, under the same request id."""
    record = await ask(gateway, json.dumps(iris_body()).encode(), **{"x-request-id": "join-me"})
    assert text(record)["id"] == "join-me"
    log = gateway.settings.data_dir / "shadow" / "iris.jsonl"

    async def shadowed() -> bool:
        lines = log.read_text().splitlines() if log.exists() else []
        return any(json.loads(line)["request_id"] == "join-me" for line in lines)

    await wait_until_async(shadowed, timeout=10)
