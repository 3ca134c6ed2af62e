"""The data plane in-process: every route of the README's Routes section and every row of its error table."""

import json
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
from app.conftest import AppClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from support import ADMIN, IRIS_LABELS, IRIS_ROWS, iris_body

from gateway.http import create_app
from gateway.service import InferenceService
from gateway.settings import load_settings


async def test_server_metadata_and_health(client: httpx.AsyncClient) -> None:
    """GET /v2 names the server; live and ready answer 200 once models are warm."""
    meta = (await client.get("/v2")).json()
    assert (
        meta["name"] == "model-gateway"
        and "binary_tensor_data" in meta["extensions"]
        and meta["version"]
    )
    assert (await client.get("/v2/health/live")).status_code == 200
    assert (await client.get("/v2/health/ready")).status_code == 200
    assert (await client.get("/v2/models/iris/ready")).status_code == 200
    assert (await client.get("/v2/models/iris/versions/green/ready")).status_code == 200


async def test_model_metadata(client: httpx.AsyncClient) -> None:
    """Model metadata lists variant names as versions, the platform and the tensor specs."""
    meta = (await client.get("/v2/models/iris")).json()
    assert meta["name"] == "iris" and meta["platform"] == "onnxruntime_onnx"
    assert sorted(meta["versions"]) == ["blue", "failing", "green", "mlp", "slow"]
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}]
    assert meta["outputs"][1] == {"name": "probabilities", "datatype": "FP32", "shape": [-1, 3]}
    direct = (await client.get("/v2/models/iris/versions/slow")).json()
    assert direct["outputs"] == [{"name": "scores", "datatype": "FP32", "shape": []}]


async def test_infer_predicts_iris_and_sets_headers(client: httpx.AsyncClient) -> None:
    """Routed inference answers the right classes from live, with the four contract headers."""
    response = await client.post(
        "/v2/models/iris/infer", json={**iris_body(IRIS_ROWS), "id": "req-1"}
    )
    assert response.status_code == 200
    body = response.json()
    assert (
        body["model_name"] == "iris" and body["model_version"] == "blue" and body["id"] == "req-1"
    )
    assert body["outputs"][0]["data"] == IRIS_LABELS
    assert response.headers["x-gateway-variant"] == "blue"
    assert response.headers["x-gateway-role"] == "live"
    assert response.headers["x-gateway-revision"] == "1"
    assert response.headers["x-request-id"] == "req-1"


async def test_request_id_header_is_echoed_or_generated(client: httpx.AsyncClient) -> None:
    """x-request-id is echoed when sent and generated (and used as `id`) when not."""
    echoed = await client.post(
        "/v2/models/iris/infer", json=iris_body(), headers={"x-request-id": "abc"}
    )
    assert echoed.headers["x-request-id"] == "abc" and echoed.json()["id"] == "abc"
    generated = await client.post("/v2/models/iris/infer", json=iris_body())
    assert len(generated.headers["x-request-id"]) >= 14
    assert generated.json()["id"] == generated.headers["x-request-id"]


async def test_direct_variant_bypasses_routing(client: httpx.AsyncClient) -> None:
    """/versions/{variant}/infer answers from that variant with role `direct`."""
    response = await client.post("/v2/models/iris/versions/green/infer", json=iris_body(IRIS_ROWS))
    assert response.json()["model_version"] == "green"
    assert response.headers["x-gateway-role"] == "direct"
    assert response.json()["outputs"][0]["data"] == IRIS_LABELS


async def test_requested_outputs_subset(client: httpx.AsyncClient) -> None:
    """`outputs` in the request selects which outputs come back."""
    response = await client.post(
        "/v2/models/iris/infer", json={**iris_body(), "outputs": [{"name": "probabilities"}]}
    )
    outputs = response.json()["outputs"]
    assert [o["name"] for o in outputs] == ["probabilities"]
    assert sum(outputs[0]["data"]) == pytest.approx(1.0, abs=1e-5)


async def test_binary_extension_both_ways(client: httpx.AsyncClient) -> None:
    """A binary input and binary outputs round-trip through the binary data extension."""
    rows = np.array(IRIS_ROWS, np.float32)
    header = orjson.dumps({
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [3, 4], "parameters": {"binary_data_size": rows.nbytes}}],
        "outputs": [{"name": "label", "parameters": {"binary_data": True}}, {"name": "probabilities"}],
    })  # fmt: skip
    response = await client.post(
        "/v2/models/iris/infer", content=header + rows.tobytes(),
        headers={"Inference-Header-Content-Length": str(len(header)), "Content-Type": "application/octet-stream"},
    )  # fmt: skip
    assert response.status_code == 200
    length = int(response.headers["inference-header-content-length"])
    document = orjson.loads(response.content[:length])
    assert document["outputs"][0]["parameters"]["binary_data_size"] == 24
    assert np.frombuffer(response.content[length:], np.int64).tolist() == IRIS_LABELS
    assert len(document["outputs"][1]["data"]) == 9


async def test_v1_predict(client: httpx.AsyncClient) -> None:
    """v1 :predict answers one prediction per instance, routed like /infer."""
    response = await client.post("/v1/models/iris:predict", json={"instances": IRIS_ROWS})
    assert response.status_code == 200
    assert [p["label"] for p in response.json()["predictions"]] == IRIS_LABELS
    assert response.headers["x-gateway-role"] == "live"


BAD_REQUESTS = [
    # (what, path, body or raw bytes, status, words in the error)
    ("not JSON", "/v2/models/iris/infer", b"{oops", 400, "not valid JSON"),
    (
        "missing input",
        "/v2/models/iris/infer",
        {"inputs": [{"name": "other", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]},
        400,
        "unknown input 'other'",
    ),
    (
        "wrong datatype",
        "/v2/models/iris/infer",
        {"inputs": [{"name": "input", "datatype": "INT64", "shape": [1, 4], "data": [1, 2, 3, 4]}]},
        400,
        "expects FP32",
    ),
    (
        "shape vs data",
        "/v2/models/iris/infer",
        {"inputs": [{"name": "input", "datatype": "FP32", "shape": [2, 4], "data": [1, 2, 3, 4]}]},
        400,
        "needs 8 values",
    ),
    (
        "shape vs model",
        "/v2/models/iris/infer",
        {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]}]},
        400,
        "expects [-1, 4]",
    ),
    (
        "non-numeric",
        "/v2/models/iris/infer",
        {
            "inputs": [
                {"name": "input", "datatype": "FP32", "shape": [1, 4], "data": ["a", "b", "c", "d"]}
            ]
        },
        400,
        "must be numbers",
    ),
    (
        "unknown output",
        "/v2/models/iris/infer",
        {**iris_body(), "outputs": [{"name": "nope"}]},
        400,
        "unknown output 'nope'",
    ),
    (
        "model fails on data",
        "/v2/models/iris/versions/failing/infer",
        iris_body(IRIS_ROWS),
        400,
        "model failed on these inputs",
    ),
    ("unknown model", "/v2/models/nope/infer", iris_body(), 404, "unknown model 'nope'"),
    (
        "unknown variant",
        "/v2/models/iris/versions/nope/infer",
        iris_body(),
        404,
        "no variant 'nope'",
    ),
    ("unknown model metadata", "/v2/models/nope", None, 404, "unknown model"),
    ("unknown variant ready", "/v2/models/iris/versions/nope/ready", None, 404, "no variant"),
    ("v1 not instances", "/v1/models/iris:predict", {"rows": []}, 400, "instances"),
    (
        "v1 unknown model",
        "/v1/models/nope:predict",
        {"instances": [[1, 2, 3, 4]]},
        404,
        "unknown model",
    ),
    ("unknown route", "/v3/whatever", None, 404, "Not Found"),
]


@pytest.mark.parametrize(
    ("what", "path", "body", "status", "words"), BAD_REQUESTS, ids=[r[0] for r in BAD_REQUESTS]
)
async def test_error_table(
    client: httpx.AsyncClient, what: str, path: str, body: object, status: int, words: str
) -> None:
    """Each bad request gets the contract's code and an {"error"} message; the next request works."""
    if body is None:
        response = await client.get(path)
    else:
        content = body if isinstance(body, bytes) else orjson.dumps(body)
        response = await client.post(path, content=content)
    assert response.status_code == status, response.text
    assert words in response.json()["error"]
    assert (await client.post("/v2/models/iris/infer", json=iris_body())).status_code == 200


async def test_body_over_limit_is_413(make_client: AppClient) -> None:
    """A body over max_body_bytes is 413, declared or streamed without a length."""
    client = await make_client(max_body_bytes=1000)
    big = orjson.dumps(iris_body([[1.0, 2.0, 3.0, 4.0]] * 100))
    response = await client.post("/v2/models/iris/infer", content=big)
    assert response.status_code == 413 and "limit of 1000 bytes" in response.json()["error"]

    async def chunks():  # type: ignore[no-untyped-def]
        for i in range(0, len(big), 100):
            yield big[i : i + 100]

    streamed = await client.post("/v2/models/iris/infer", content=chunks())
    assert streamed.status_code == 413
    assert (await client.post("/v2/models/iris/infer", json=iris_body())).status_code == 200


async def test_slow_inference_is_504(make_client: AppClient) -> None:
    """An inference slower than request_timeout_s answers 504; others keep being served."""
    client = await make_client(request_timeout_s=0.05)
    response = await client.post("/v2/models/iris/versions/slow/infer", json=iris_body())
    assert response.status_code == 504 and "request timeout" in response.json()["error"]
    assert response.headers["x-gateway-variant"] == "slow"
    assert (await client.post("/v2/models/iris/infer", json=iris_body())).status_code == 200


async def test_metrics_count_requests(client: httpx.AsyncClient) -> None:
    """/metrics is Prometheus text and counts answered requests by variant, role and code."""
    await client.post("/v2/models/iris/infer", json=iris_body())
    await client.post("/v2/models/iris/versions/green/infer", json=iris_body())
    await client.post("/v2/models/iris/infer", content=b"{")
    families = {
        f.name: f for f in text_string_to_metric_families((await client.get("/metrics")).text)
    }
    counts = {
        (s.labels["variant"], s.labels["role"], s.labels["code"]): s.value
        for s in families["gateway_requests"].samples if s.name == "gateway_requests_total"
    }  # fmt: skip
    assert counts == {
        ("blue", "live", "200"): 1,
        ("green", "direct", "200"): 1,
        ("blue", "live", "400"): 1,
    }


async def test_admin_off_without_token(make_client: AppClient) -> None:
    """Without GATEWAY_ADMIN_TOKEN every admin call is 403, even with some token."""
    client = await make_client(token=None)
    response = await client.get("/admin/models", headers=ADMIN)
    assert response.status_code == 403 and "GATEWAY_ADMIN_TOKEN" in response.json()["error"]


async def test_not_ready_is_503(write_config: Any) -> None:
    """Before the lifespan has loaded the models, ready and inference answer 503 with a message."""
    app = create_app(load_settings(write_config(), env={}), registry=CollectorRegistry())
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://gw"
    ) as client:
        assert (await client.get("/v2/health/live")).status_code == 200
        assert (await client.get("/v2/health/ready")).status_code == 503
        response = await client.post("/v2/models/iris/infer", json=iris_body())
        assert response.status_code == 503 and "loading" in response.json()["error"]
        assert (await client.get("/v2/models/iris")).status_code == 503


SHORTCUT_CASES = [
    ("/v2/models/iris/infer", {**iris_body(IRIS_ROWS), "id": "a"}),
    ("/v2/models/iris/versions/green/infer", iris_body()),
    ("/v1/models/iris:predict", {"instances": IRIS_ROWS}),
    ("/v2/models/iris/infer", {"inputs": "nope"}),
    ("/v2/models/nope/infer", iris_body()),
    ("/v2/models/iris/versions/nope/infer", iris_body()),
]


async def test_shortcut_and_router_answer_alike(make_client: AppClient) -> None:
    """POSTs to the inference routes skip Starlette's middleware; under a root_path they go
    through the router instead. Good and bad requests get the same answers either way."""
    shortcut, router = await make_client(), await make_client(root_path="/gw")
    for path, body in SHORTCUT_CASES:
        headers = {"x-request-id": "same"}
        fast = await shortcut.post(path, json=body, headers=headers)
        slow = await router.post(path, json=body, headers=headers)
        assert fast.status_code == slow.status_code, path
        assert fast.content == slow.content, path
        assert {k: v for k, v in fast.headers.items() if k.startswith("x-")} == {
            k: v for k, v in slow.headers.items() if k.startswith("x-")
        }


async def test_unexpected_error_is_a_logged_json_500(
    make_client: AppClient, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A bug inside inference answers 500 with an {"error"} body and a log line with the
    traceback, by the shortcut and by the router alike; the next request is served."""
    shortcut, router = await make_client(), await make_client(root_path="/gw")

    async def broken(*args: Any) -> None:
        raise RuntimeError("bug in the gateway")

    with monkeypatch.context() as patch:
        patch.setattr(InferenceService, "infer", broken)
        for response in [
            await shortcut.post("/v2/models/iris/infer", json=iris_body()),
            await router.post("/v2/models/iris/infer", json=iris_body()),
        ]:
            assert response.status_code == 500
            assert response.json() == {"error": "internal error; the gateway logged the details"}
            assert response.headers["x-gateway-variant"] == "blue"
    assert caplog.text.count("RuntimeError: bug in the gateway") == 2
    assert (await shortcut.post("/v2/models/iris/infer", json=iris_body())).status_code == 200


async def test_wrong_method_is_a_json_405(client: httpx.AsyncClient) -> None:
    """A GET on an inference route is 405 with an {"error"} body, like every other error."""
    response = await client.get("/v2/models/iris/infer")
    assert response.status_code == 405 and response.json()["error"]


@pytest.mark.parametrize("body_id", ["日本", "a\r\nb", "x" * 300, "tab\there"])
async def test_any_body_id_is_echoed_without_breaking_headers(
    client: httpx.AsyncClient, body_id: str
) -> None:
    """A body `id` that cannot travel in a header is still echoed in the body; the header gets a generated id."""
    response = await client.post("/v2/models/iris/infer", json={**iris_body(), "id": body_id})
    assert response.status_code == 200
    assert response.json()["id"] == body_id
    assert response.headers["x-request-id"] and response.headers["x-request-id"] != body_id


async def test_body_id_wins_in_the_body_header_id_in_the_header(client: httpx.AsyncClient) -> None:
    """With both, the response body echoes the body's id and the header echoes the header's."""
    response = await client.post(
        "/v2/models/iris/infer",
        json={**iris_body(), "id": "body-1"},
        headers={"x-request-id": "hdr-1"},
    )
    assert response.json()["id"] == "body-1" and response.headers["x-request-id"] == "hdr-1"


scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats()  # NaN and infinities too: json.dumps writes them as literals
    | st.text(max_size=4)
)
tensor_fields = st.fixed_dictionaries(
    {},
    optional={
        "name": st.sampled_from(["input", "x"]) | scalars,
        "datatype": st.sampled_from(["FP32", "FP64", "INT64", "BOOL", "BYTES", "fp32"]) | scalars,
        "shape": st.lists(st.integers(-2, 5) | st.sampled_from([2**62, 2**63, 2**64]), max_size=3)
        | scalars,
        "data": st.recursive(scalars, lambda c: st.lists(c, max_size=5), max_leaves=12),
        "parameters": st.dictionaries(
            st.sampled_from(["binary_data_size", "binary_data"]), scalars, max_size=2
        )
        | scalars,
    },
)
infer_bodies = st.fixed_dictionaries(
    {},
    optional={
        "inputs": st.lists(tensor_fields, max_size=2) | scalars,
        "outputs": st.lists(
            st.fixed_dictionaries(
                {},
                optional={
                    "name": st.sampled_from(["label", "nope"]) | scalars,
                    "parameters": st.dictionaries(
                        st.sampled_from(["binary_data", "classification", "class_count"]),
                        scalars,
                        max_size=2,
                    ),
                },
            ),
            max_size=2,
        )
        | scalars,
        "id": scalars,
        "parameters": st.dictionaries(st.just("binary_data_output"), scalars) | scalars,
        "instances": st.recursive(
            scalars, lambda c: st.lists(c, min_size=1, max_size=4), max_leaves=12
        ),
    },
)


async def test_fuzzed_inference_requests_never_fail_with_500(client: httpx.AsyncClient) -> None:
    """Random v2 and v1 bodies, binary header lengths and trailing bytes: always 200 or a 4xx with an error."""
    calls: list[tuple[str, bytes, dict[str, str]]] = []

    @settings(
        max_examples=400, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck)
    )
    @given(
        infer_bodies,
        st.binary(max_size=16),
        st.none() | st.integers(-5, 400),
        st.sampled_from(
            [
                "/v2/models/iris/infer",
                "/v1/models/iris:predict",
                "/v2/models/iris/versions/failing/infer",
            ]
        ),
    )
    def collect(body: dict[str, object], tail: bytes, header_length: int | None, path: str) -> None:
        content = json.dumps(body).encode() + tail  # json: orjson refuses ints over 64 bits
        headers = (
            {} if header_length is None else {"Inference-Header-Content-Length": str(header_length)}
        )
        calls.append((path, content, headers))

    collect()
    for path, content, headers in calls:
        response = await client.post(path, content=content, headers=headers)
        assert response.status_code in (200, 400, 404, 413), (path, content, headers, response.text)
        assert response.status_code == 200 or response.json()["error"]
    assert (await client.post("/v2/models/iris/infer", json=iris_body())).status_code == 200
