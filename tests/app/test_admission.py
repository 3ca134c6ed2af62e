"""Batching and admission over HTTP: 429 with Retry-After, deadlines, the `timeout` parameter,
batched answers, Triton's config of a batching variant, and a variant that cannot batch."""

import asyncio
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from app.conftest import AppClient
from prometheus_client.parser import text_string_to_metric_families
from support import ADMIN, base_config, iris_body


def models(**variants: dict[str, Any]) -> dict[str, Any]:
    """The base config's models, with extra or changed iris and mlp variants."""
    config = base_config(Path("."), Path("."))["models"]
    for name, variant in variants.items():
        model = "mlp" if name.startswith("mlp") else "iris"
        config[model]["variants"][name] = variant
    return config


def mlp_body(rows: np.ndarray, **parameters: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "inputs": [
            {
                "name": "input",
                "datatype": "FP32",
                "shape": list(rows.shape),
                "data": rows.ravel().tolist(),
            }
        ]
    }
    if parameters:
        body["parameters"] = parameters
    return body


async def samples(client: httpx.AsyncClient, name: str) -> dict[tuple[str, ...], float]:
    text = (await client.get("/metrics")).text
    return {
        tuple(sorted(sample.labels.items())): sample.value  # type: ignore[misc]
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    }


async def test_full_queue_answers_429_with_retry_after(make_client: AppClient) -> None:
    """Past max_queue_size waiting requests a request gets 429 and Retry-After at once; the
    admitted ones and every other variant are served, and the rejection is counted."""
    slow = {"path": "iris/slow/model.onnx", "max_queue_size": 1}
    client = await make_client(request_timeout_s=60, models=models(slow=slow))
    url = "/v2/models/iris/versions/slow/infer"
    first = [asyncio.ensure_future(client.post(url, json=iris_body())) for _ in range(8)]
    done, pending = await asyncio.wait(first, return_when=asyncio.FIRST_COMPLETED)
    refused = [task.result() for task in done]
    assert refused and all(r.status_code == 429 for r in refused)
    assert int(refused[0].headers["retry-after"]) >= 1
    assert "max_queue_size" in refused[0].json()["error"]
    assert refused[0].headers["x-gateway-variant"] == "slow"
    # Refused before its body is read and decoded: a refusal must cost less than a request.
    assert (await client.post(url, content=b"not json")).status_code == 429
    assert (await client.post("/v2/models/iris/infer", json=iris_body())).status_code == 200
    answers = [task.result() for task in done] + list(await asyncio.gather(*pending))
    codes = sorted(r.status_code for r in answers)
    assert set(codes) == {200, 429} and codes.count(200) >= 2
    rejected = await samples(client, "gateway_rejected_requests_total")
    key = (("model", "iris"), ("reason", "queue_full"), ("variant", "slow"))
    assert rejected[key] == codes.count(429) + 1


@pytest.mark.parametrize("timeout", ["1000", -1, 1.5, True, [1]])
async def test_a_bad_timeout_parameter_is_400(client: httpx.AsyncClient, timeout: Any) -> None:
    """`timeout` must be a whole number of microseconds."""
    body = iris_body() | {"parameters": {"timeout": timeout}}
    response = await client.post("/v2/models/iris/infer", json=body)
    assert response.status_code == 400 and "'timeout'" in response.json()["error"]


async def test_the_timeout_parameter_shortens_the_deadline(make_client: AppClient) -> None:
    """A request's own timeout (µs) below its run's cost answers 504 at once; 0 means the
    server's request_timeout_s; a roomy one is served."""
    client = await make_client(request_timeout_s=60)
    url = "/v2/models/iris/versions/slow/infer"
    short = await client.post(url, json=iris_body() | {"parameters": {"timeout": 1000}})
    assert short.status_code == 504 and "deadline" in short.json()["error"]
    for timeout in (0, 60_000_000):
        body = iris_body() | {"parameters": {"timeout": timeout}}
        assert (await client.post(url, json=body)).status_code == 200
    rejected = await samples(client, "gateway_rejected_requests_total")
    assert rejected[(("model", "iris"), ("reason", "deadline"), ("variant", "slow"))] == 1


async def test_batched_answers_match_unbatched_ones(make_client: AppClient) -> None:
    """Concurrent requests to a batching variant get the answers the same model gives alone,
    and the batches show in gateway_batch_size and gateway_queue_seconds."""
    batched = {"path": "mlp/1/model.onnx", "max_batch_size": 32, "max_queue_delay_us": 2000}
    client = await make_client(inline_run_below_s=0, models=models(mlp_batched=batched))
    rng = np.random.default_rng(3)
    inputs = [rng.normal(size=(int(rng.integers(1, 4)), 64)).astype(np.float32) for _ in range(48)]
    url = "/v2/models/mlp/versions/{}/infer"
    alone = [await client.post(url.format("v1"), json=mlp_body(x)) for x in inputs]
    together = await asyncio.gather(
        *(client.post(url.format("mlp_batched"), json=mlp_body(x)) for x in inputs)
    )
    for x, one, many in zip(inputs, alone, together, strict=True):
        assert one.status_code == many.status_code == 200
        expected, got = one.json()["outputs"][0], many.json()["outputs"][0]
        assert got["shape"] == expected["shape"] == [len(x), 10]
        assert np.allclose(got["data"], expected["data"], rtol=1e-5, atol=1e-6)
    sizes = await samples(client, "gateway_batch_size_count")
    rows = await samples(client, "gateway_batch_size_sum")
    key = (("model", "mlp"), ("variant", "mlp_batched"))
    assert rows[key] == sum(len(x) for x in inputs) and sizes[key] < len(inputs)
    waits = await samples(client, "gateway_queue_seconds_count")
    assert waits[key] == len(inputs)


async def test_triton_config_shows_dynamic_batching(make_client: AppClient) -> None:
    """A batching variant's Triton config has its max_batch_size, dims without the batch
    dimension, and dynamic_batching; other variants keep max_batch_size 0."""
    batched = {
        "path": "mlp/1/model.onnx",
        "max_batch_size": 16,
        "preferred_batch_size": [8, 16],
        "max_queue_delay_us": 300,
        "max_queue_size": 50,
    }
    client = await make_client(models=models(mlp_batched=batched))
    config = (await client.get("/v2/models/mlp/versions/mlp_batched/config")).json()
    assert config["max_batch_size"] == 16
    assert config["input"][0]["dims"] == [64] and config["output"][0]["dims"] == [10]
    assert config["dynamic_batching"] == {
        "preferred_batch_size": [8, 16],
        "max_queue_delay_microseconds": 300,
        "default_queue_policy": {"max_queue_size": 50},
    }
    plain = (await client.get("/v2/models/mlp/config")).json()
    assert plain["max_batch_size"] == 0 and plain["input"][0]["dims"] == [-1, 64]
    assert "dynamic_batching" not in plain


async def test_reload_refuses_batching_a_model_without_a_batch_dimension(
    make_client: AppClient, write_config: Any
) -> None:
    """Batching a variant whose output has no batch dimension is refused, naming it; nothing
    changes."""
    client = await make_client()
    write_config(models=models(slow={"path": "iris/slow/model.onnx", "max_batch_size": 4}))
    response = await client.post("/admin/reload", headers=ADMIN)
    assert response.status_code == 409
    message = response.json()["error"]
    assert "'iris', variant 'slow'" in message and "batch dimension" in message
    config = (await client.get("/v2/models/iris/versions/slow/config")).json()
    assert config["max_batch_size"] == 0
