"""Admission control against a real `gateway serve` under overload, with real clients."""

import asyncio
import json
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from prometheus_client.parser import text_string_to_metric_families
from support import (
    IRIS_ROWS,
    GatewayProcess,
    base_config,
    iris_body,
    make_slow_batchable_model,
)
from tritonclient.utils import InferenceServerException

pytestmark = pytest.mark.e2e


@pytest.fixture
def gateway(
    tmp_path: Path,
    model_repo: Path,
    write_config: Callable[..., Path],
    start_gateway: Callable[..., GatewayProcess],
) -> GatewayProcess:
    """`iris/slow` (about half a second a run) behind a queue of 4, and a slow batching
    variant."""
    make_slow_batchable_model(model_repo / "iris" / "batched" / "model.onnx")
    models = base_config(model_repo, tmp_path)["models"]
    models["iris"]["variants"]["slow"]["max_queue_size"] = 4
    models["iris"]["variants"]["batched"] = {
        "path": "iris/batched/model.onnx",
        "max_batch_size": 64,
    }
    return start_gateway(write_config(request_timeout_s=20.0, models=models))


async def test_overload_is_answered_at_once_and_health_stays_up(gateway: GatewayProcess) -> None:
    """48 callers at once on a variant that serves a few a second: the queue takes 4, everyone
    else gets 429 with Retry-After, nobody gets a 5xx, and health and /metrics answer meanwhile."""
    url = f"{gateway.url}/v2/models/iris/versions/slow/infer"
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=100)) as client:
        calls = [asyncio.ensure_future(client.post(url, json=iris_body())) for _ in range(48)]
        refused = await next(asyncio.as_completed(calls))
        assert refused.status_code == 429  # the first answer is a refusal, not a served request
        ready = await client.get(f"{gateway.url}/v2/health/ready")
        metrics = await client.get(f"{gateway.url}/metrics")
        assert ready.status_code == 200 and metrics.status_code == 200
        assert sum(not call.done() for call in calls) >= 4  # the admitted are still being served
        answers = await asyncio.gather(*calls)
    codes = [answer.status_code for answer in answers]
    assert set(codes) <= {200, 429}, codes
    assert 4 <= codes.count(200) < 48
    for answer in answers:
        if answer.status_code == 429:
            assert int(answer.headers["retry-after"]) >= 1 and "error" in answer.json()
    counted = _slow_counts(gateway, "gateway_rejected_requests_total", "reason")
    assert counted == {"queue_full": codes.count(429)}


def _slow_counts(gateway: GatewayProcess, name: str, label: str) -> dict[str, float]:
    """The samples of counter `name` for the variant `slow`, by the value of `label`."""
    scraped = httpx.get(f"{gateway.url}/metrics").text
    return {
        sample.labels[label]: sample.value
        for family in text_string_to_metric_families(scraped)
        for sample in family.samples
        if sample.name == name and sample.labels["variant"] == "slow"
    }


def test_tritonclient_timeout_is_the_request_deadline(gateway: GatewayProcess) -> None:
    """tritonclient's `timeout=` (µs) shorter than the run answers 504; a roomy one is served."""
    client = triton.InferenceServerClient(gateway.url.removeprefix("http://"))
    rows = np.array(IRIS_ROWS, np.float32)
    tensor = triton.InferInput("input", list(rows.shape), "FP32")
    tensor.set_data_from_numpy(rows)
    started = time.monotonic()
    with pytest.raises(InferenceServerException) as caught:
        client.infer("iris", [tensor], model_version="slow", timeout=2000)
    assert caught.value.status() == "504" and "deadline" in caught.value.message()
    assert time.monotonic() - started < 0.5  # refused before running, not after a run
    answer = client.infer("iris", [tensor], model_version="slow", timeout=30_000_000)
    assert answer.as_numpy("scores") is not None


def test_batched_callers_each_get_their_own_answer(gateway: GatewayProcess) -> None:
    """32 concurrent tritonclient callers of a slow batching variant each get the answer for
    their own rows, and the runs were batched (far fewer runs than requests)."""
    client = triton.InferenceServerClient(
        gateway.url.removeprefix("http://"), concurrency=32, connection_timeout=60
    )
    inputs = [np.full((1 + i % 3, 4), float(i), np.float32) for i in range(32)]

    def request(x: np.ndarray) -> Any:
        tensor = triton.InferInput("input", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        return tensor

    pending = [client.async_infer("iris", [request(x)], model_version="batched") for x in inputs]
    for x, call in zip(inputs, pending, strict=True):
        assert np.array_equal(call.get_result().as_numpy("scores"), x * 2)
    scraped = httpx.get(f"{gateway.url}/metrics").text
    batches = {
        sample.name: sample.value
        for family in text_string_to_metric_families(scraped)
        for sample in family.samples
        if sample.name.startswith("gateway_batch_size_")
        and sample.labels.get("variant") == "batched"
    }
    assert batches["gateway_batch_size_sum"] == sum(len(x) for x in inputs)
    assert batches["gateway_batch_size_count"] <= len(inputs) // 2


def _answers(sock: socket.socket, count: int) -> list[tuple[int, dict[str, str], bytes]]:
    """Read `count` HTTP/1.1 answers (status, headers, body; each with a Content-Length)."""
    buffered, answers = b"", []
    while len(answers) < count:
        head_end = buffered.find(b"\r\n\r\n")
        if head_end >= 0:
            lines = buffered[:head_end].decode("latin-1").split("\r\n")
            headers = dict(line.lower().split(": ", 1) for line in lines[1:])
            end = head_end + 4 + int(headers["content-length"])
            if len(buffered) >= end:
                answers.append((int(lines[0].split()[1]), headers, buffered[head_end + 4 : end]))
                buffered = buffered[end:]
                continue
        chunk = sock.recv(65536)
        assert chunk, f"connection closed after {len(answers)} answers"
        buffered += chunk
    return answers


def _head(path: str, length: int, request_id: str) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\n"
        f"X-Request-Id: {request_id}\r\nContent-Length: {length}\r\n\r\n"
    ).encode()


def _post(path: str, body: bytes, request_id: str) -> bytes:
    return _head(path, len(body), request_id) + body


async def test_a_refusal_keeps_its_connection_and_says_who_refused(gateway: GatewayProcess) -> None:
    """With the queue full, a request is refused as soon as its head arrives: the 429 carries
    the request id, the routing headers and Retry-After, its body is dropped, the same
    connection then serves the next request (sent after it, or pipelined with it), and the
    refusals are counted."""
    path = "/v2/models/iris/versions/slow/infer"
    body = json.dumps(iris_body()).encode()
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=20)) as client:
        calls = [
            asyncio.ensure_future(client.post(gateway.url + path, content=body)) for _ in range(8)
        ]
        first = await next(asyncio.as_completed(calls))
        assert first.status_code == 429  # the queue is full: 1 running, 4 waiting
        with socket.create_connection(("127.0.0.1", gateway.port), timeout=30) as sock:
            sock.sendall(_post(path, body, "door-1"))
            ((status, headers, answer),) = await asyncio.to_thread(_answers, sock, 1)
            ready = b"GET /v2/health/live HTTP/1.1\r\nHost: gateway\r\n\r\n"
            sock.sendall(_post(path, body, "door-2") + ready)  # pipelined
            (second, third) = await asyncio.to_thread(_answers, sock, 2)
        await asyncio.gather(*calls)
    assert status == 429 and int(headers["retry-after"]) >= 1
    assert headers["x-request-id"] == "door-1" and headers["content-type"] == "application/json"
    assert (headers["x-gateway-variant"], headers["x-gateway-role"]) == ("slow", "direct")
    assert "max_queue_size" in json.loads(answer)["error"]
    assert second[0] == 429 and second[1]["x-request-id"] == "door-2"
    assert third[0] == 200 and json.loads(third[2]) == {"live": True}
    counts = _slow_counts(gateway, "gateway_requests_total", "code")
    assert counts["429"] == 2 + sum(call.result().status_code == 429 for call in calls)


async def test_places_held_for_bodies_are_given_back(gateway: GatewayProcess) -> None:
    """A request holds its place in the queue from its head on; one whose body is bad (400) or
    never comes (its client leaves) gives it back: after 30 of each, a queue of 4 takes 4."""
    path = "/v2/models/iris/versions/slow/infer"
    for number in range(30):
        with socket.create_connection(("127.0.0.1", gateway.port), timeout=30) as sock:
            sock.sendall(_post(path, b'{"inputs": [', f"bad-{number}"))
            ((status, _, _),) = _answers(sock, 1)
            assert status == 400
        with socket.create_connection(("127.0.0.1", gateway.port), timeout=30) as sock:
            sock.sendall(_head(path, 99, f"gone-{number}"))  # and no body: the client leaves
    async with httpx.AsyncClient(timeout=60) as client:
        answers = await asyncio.gather(
            *(client.post(gateway.url + path, json=iris_body()) for _ in range(4))
        )
    assert [answer.status_code for answer in answers] == [200] * 4


async def test_a_connection_idle_after_a_refusal_is_closed_as_any_idle_one(
    gateway: GatewayProcess,
) -> None:
    """A request refused from its head, whose body comes later: once the body is read, the
    connection idles and closes after uvicorn's keep-alive timeout (5 s), as after any answer."""
    path = "/v2/models/iris/versions/slow/infer"
    body = json.dumps(iris_body()).encode()
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=20)) as client:
        calls = [
            asyncio.ensure_future(client.post(gateway.url + path, content=body)) for _ in range(8)
        ]
        assert (await next(asyncio.as_completed(calls))).status_code == 429  # the queue is full
        with socket.create_connection(("127.0.0.1", gateway.port), timeout=30) as sock:
            sock.sendall(_head(path, len(body), "late-body"))
            ((status, _, _),) = await asyncio.to_thread(_answers, sock, 1)
            sock.sendall(body)
            closed = await asyncio.to_thread(sock.recv, 1)  # blocks until the server closes
        await asyncio.gather(*calls)
    assert status == 429 and closed == b""
