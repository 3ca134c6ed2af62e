"""Triton's model configuration, statistics and repository extensions, through tritonclient.http."""

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from support import IRIS_ROWS, GatewayProcess, RedisServer, iris_body
from tritonclient.utils import InferenceServerException

pytestmark = pytest.mark.e2e

IRIS_VARIANTS = ["blue", "green", "mlp", "slow", "failing"]


@pytest.fixture
def gateway(
    write_config: Callable[..., Path], start_gateway: Callable[..., GatewayProcess]
) -> GatewayProcess:
    return start_gateway(write_config())


def client_of(gateway: GatewayProcess) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(gateway.url.removeprefix("http://"))


def refused(call: Callable[[], object]) -> tuple[str, str]:
    """The status and message tritonclient raised for a call the gateway refused."""
    with pytest.raises(InferenceServerException) as caught:
        call()
    return caught.value.status(), caught.value.message()


def test_model_config(gateway: GatewayProcess) -> None:
    """get_model_config gives the live variant's config, or the named one's; 404 for unknowns."""
    client = client_of(gateway)
    config = client.get_model_config("iris")
    assert {k: config[k] for k in ("name", "platform", "backend", "max_batch_size")} == {
        "name": "iris",
        "platform": "onnxruntime_onnx",
        "backend": "onnxruntime",
        "max_batch_size": 0,
    }
    assert config["input"] == [
        {"name": "input", "data_type": "TYPE_FP32", "dims": [-1, 4], "format": "FORMAT_NONE"}
    ]
    outputs = {output["name"]: output for output in config["output"]}
    assert outputs["label"]["data_type"] == "TYPE_INT64" and outputs["label"]["dims"] == [-1]
    assert outputs["probabilities"]["data_type"] == "TYPE_FP32"
    assert config["parameters"] == {"variant": {"string_value": "blue"}}
    green = client.get_model_config("iris", model_version="green")
    assert green["parameters"] == {"variant": {"string_value": "green"}}
    assert refused(lambda: client.get_model_config("nope"))[0] == "404"
    assert refused(lambda: client.get_model_config("iris", model_version="red"))[0] == "404"
    answer = httpx.get(f"{gateway.url}/v2/models/iris/versions/red/config")
    assert answer.status_code == 404 and "red" in answer.json()["error"]
    client.close()


def post_infer(url: str, path: str, body: dict[str, Any] | bytes) -> int:
    if isinstance(body, bytes):
        return httpx.post(f"{url}{path}", content=body).status_code
    return httpx.post(f"{url}{path}", json=body).status_code


def test_inference_statistics_count_exactly_over_two_workers(
    redis_server: RedisServer,
    write_config: Callable[..., Path],
    start_gateway: Callable[..., GatewayProcess],
) -> None:
    """get_inference_statistics counts every worker's answers exactly: successes and failures
    per variant, model runs, batch rows, the last inference's time; zeros for the idle ones."""
    gateway = start_gateway(write_config(redis_url=redis_server.url), workers=2)
    started_ms = time.time() * 1000
    url = gateway.url  # httpx.post: a fresh connection each time, so both workers answer
    for _ in range(5):
        assert post_infer(url, "/v2/models/iris/infer", iris_body(IRIS_ROWS)) == 200  # 3 rows
    for _ in range(2):
        assert post_infer(url, "/v2/models/iris/infer", iris_body()) == 200  # 1 row
    for _ in range(3):
        assert post_infer(url, "/v2/models/iris/infer", b"{") == 400
    for _ in range(4):
        assert post_infer(url, "/v2/models/iris/versions/green/infer", iris_body()) == 200
    for _ in range(2):  # the failing model refuses batches of more than one row
        assert (
            post_infer(url, "/v2/models/iris/versions/failing/infer", iris_body(IRIS_ROWS)) == 400
        )

    client = client_of(gateway)
    everything = client.get_inference_statistics()["model_stats"]
    assert sorted((s["name"], s["version"]) for s in everything) == sorted(
        [("iris", v) for v in IRIS_VARIANTS] + [("mlp", "v1")]
    )
    [blue] = client.get_inference_statistics("iris", "blue")["model_stats"]
    stats = blue["inference_stats"]
    assert (blue["name"], blue["version"]) == ("iris", "blue")
    assert (blue["inference_count"], blue["execution_count"]) == (5 * 3 + 2, 7)
    assert (stats["success"]["count"], stats["fail"]["count"]) == (7, 3)
    assert stats["compute_infer"]["count"] == 7
    assert 0 < stats["compute_infer"]["ns"] < stats["success"]["ns"]
    assert stats["fail"]["ns"] > 0 and stats["queue"] == {"count": 0, "ns": 0}
    assert started_ms - 1000 <= blue["last_inference"] <= time.time() * 1000 + 1000
    assert blue["batch_stats"] == []
    by_variant = {s["version"]: s for s in client.get_inference_statistics("iris")["model_stats"]}
    assert sorted(by_variant) == sorted(IRIS_VARIANTS)
    green, failing, mlp = by_variant["green"], by_variant["failing"], by_variant["mlp"]
    assert green["inference_stats"]["success"]["count"] == 4 and green["inference_count"] == 4
    assert failing["inference_stats"]["fail"]["count"] == 2
    assert (failing["inference_stats"]["success"]["count"], failing["execution_count"]) == (0, 0)
    assert mlp["last_inference"] == 0 and mlp["inference_stats"]["success"] == {"count": 0, "ns": 0}
    assert refused(lambda: client.get_inference_statistics("nope"))[0] == "404"
    assert refused(lambda: client.get_inference_statistics("iris", "red"))[0] == "404"
    client.close()


def test_repository_index_and_no_load_or_unload(gateway: GatewayProcess) -> None:
    """get_model_repository_index lists every variant READY; load and unload are refused (409)
    with what to do instead; /v2 advertises the three extensions."""
    client = client_of(gateway)
    index = client.get_model_repository_index()
    expected = [("iris", v) for v in IRIS_VARIANTS] + [("mlp", "v1")]
    assert sorted((e["name"], e["version"]) for e in index) == sorted(expected)
    assert {(e["state"], e["reason"]) for e in index} == {("READY", "")}
    ready = httpx.post(f"{gateway.url}/v2/repository/index", json={"ready": True})
    assert ready.status_code == 200 and len(ready.json()) == len(expected)
    wrong = httpx.post(f"{gateway.url}/v2/repository/index", json={"ready": "yes"})
    assert wrong.status_code == 400 and "ready" in wrong.json()["error"]
    status, message = refused(lambda: client.load_model("iris"))
    assert status == "409" and "/admin/reload" in message
    assert refused(lambda: client.unload_model("iris"))[0] == "409"
    extensions = client.get_server_metadata()["extensions"]
    assert {"model_configuration", "statistics", "model_repository"} <= set(extensions)
    rows = np.array(IRIS_ROWS, np.float32)  # and inference still works alongside
    tensor = triton.InferInput("input", list(rows.shape), "FP32")
    tensor.set_data_from_numpy(rows)
    assert client.infer("iris", [tensor]).as_numpy("label") is not None
    client.close()
