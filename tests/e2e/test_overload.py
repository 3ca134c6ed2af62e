"""Admission control against a real `gateway serve` under overload, with real clients."""

import asyncio
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
    scraped = httpx.get(f"{gateway.url}/metrics").text
    counted = {
        sample.labels["reason"]: sample.value
        for family in text_string_to_metric_families(scraped)
        for sample in family.samples
        if sample.name == "gateway_rejected_requests_total" and sample.labels["variant"] == "slow"
    }
    assert counted == {"queue_full": codes.count(429)}


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
