"""What passes through a real gateway process is never changed silently (README "Asking for
predictions"): non-finite floats, nesting against shape, overflowing shapes, loose flags."""

import json
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from support import (
    ADMIN,
    IRIS_LABELS,
    IRIS_ROWS,
    GatewayProcess,
    base_config,
    iris_body,
    make_identity_model,
    make_renamed_model,
    wait_until,
)
from tritonclient.utils import InferenceServerException

pytestmark = pytest.mark.e2e

NON_FINITE = [-np.inf, np.inf, np.nan, 1.5]


@pytest.fixture
def gateway(
    model_repo: Path,
    tmp_path: Path,
    write_config: Callable[..., Path],
    start_gateway: Callable[..., GatewayProcess],
) -> GatewayProcess:
    make_identity_model(model_repo / "identity" / "1" / "model.onnx")
    renames = {"label": "predicted", "probabilities": "scores"}
    make_renamed_model(
        model_repo / "iris/1/model.onnx", model_repo / "iris/renamed/model.onnx", renames
    )
    models = base_config(model_repo, tmp_path / "data")["models"]
    models["iris"]["variants"]["renamed"] = {"path": "iris/renamed/model.onnx"}
    models["identity"] = {
        "variants": {
            "a": {"path": "identity/1/model.onnx"},
            "b": {"path": "identity/1/model.onnx"},
        },
        "routing": {"live": "a", "shadows": [{"variant": "b", "sample": 1.0}]},
    }
    return start_gateway(write_config(models=models))


def identity_inputs(binary: bool) -> list[triton.InferInput]:
    inputs = []
    for bits, dtype in [("16", np.float16), ("32", np.float32), ("64", np.float64)]:
        tensor = triton.InferInput(f"x{bits}", [4], f"FP{bits}")
        tensor.set_data_from_numpy(np.array(NON_FINITE, dtype), binary_data=binary)
        inputs.append(tensor)
    return inputs


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_nan_and_infinities_pass_through_tritonclient_exactly(
    gateway: GatewayProcess, tmp_path: Path, binary: bool
) -> None:
    """-inf, +inf and NaN in FP16/32/64 come back as they went, JSON or binary; the shadow log replays them."""
    client = triton.InferenceServerClient(gateway.url.removeprefix("http://"))
    outputs = [triton.InferRequestedOutput(f"y{b}", binary_data=binary) for b in ("16", "32", "64")]
    result = client.infer("identity", identity_inputs(binary), outputs=outputs, request_id="nf")
    for bits in ("16", "32", "64"):
        answer = result.as_numpy(f"y{bits}")
        assert answer.dtype == np.dtype(f"float{bits}")
        assert np.array_equal(answer, np.array(NON_FINITE, answer.dtype), equal_nan=True)
    client.close()
    log = tmp_path / "data" / "shadow" / "identity.jsonl"
    record = json.loads(wait_until(lambda: log.exists() and log.read_text().splitlines()[0]))
    for field in ("inputs", "live_output", "shadow_output"):
        tensors = json.loads(record[field])  # the json module reads the NaN/Infinity literals
        for name, values in tensors.items():
            assert np.array_equal(np.array(values), np.array(NON_FINITE), equal_nan=True), name
    assert record["agree"] == "1"


def test_json_non_finite_literals_in_v2_and_v1(gateway: GatewayProcess) -> None:
    """Raw JSON: the literals are read and written, never null; null stays a 400."""
    body = (
        '{"inputs": [{"name": "x16", "datatype": "FP16", "shape": [3], "data": [-Infinity, Infinity, NaN]},'
        ' {"name": "x32", "datatype": "FP32", "shape": [3], "data": [-Infinity, Infinity, NaN]},'
        ' {"name": "x64", "datatype": "FP64", "shape": [3], "data": [-Infinity, Infinity, NaN]}]}'
    )
    response = httpx.post(f"{gateway.url}/v2/models/identity/infer", content=body)
    assert response.status_code == 200, response.text
    assert response.text.count('"data":[-Infinity,Infinity,NaN]') == 3
    refused = httpx.post(
        f"{gateway.url}/v2/models/identity/infer", content=body.replace("NaN", "null", 1)
    )
    assert refused.status_code == 400 and "must be numbers" in refused.json()["error"]
    v1 = httpx.post(
        f"{gateway.url}/v1/models/identity:predict",
        content='{"inputs": {"x16": [NaN], "x32": [-Infinity], "x64": [Infinity]}}',
    )
    assert v1.status_code == 200, v1.text
    assert v1.text == '{"outputs":{"y16":[NaN],"y32":[-Infinity],"y64":[Infinity]}}'


@pytest.mark.parametrize(
    ("tensor", "status", "message"),
    [
        (
            {"shape": [2, 4], "data": [[5.1, 3.5], [1.4, 0.2], [6.7, 3.0], [5.2, 2.3]]},
            400,
            "nested as [4, 2]",
        ),
        ({"shape": [2**62, 0], "data": []}, 400, "larger than 2**63 bytes"),
        ({"shape": [-1, 4], "data": []}, 400, "non-negative"),
        ({"shape": [2, 4.0], "data": []}, 400, "non-negative"),
        ({"shape": [1, 4], "data": [[5.1, 3.5, True, 0.2]]}, 400, "mixes booleans"),
    ],
)
def test_shapes_and_data_that_disagree_are_400s(
    gateway: GatewayProcess, tensor: dict[str, object], status: int, message: str
) -> None:
    """A transposed batch, an overflowing or odd shape, booleans among numbers: a 400 that says so."""
    body = {"inputs": [{"name": "input", "datatype": "FP32", **tensor}]}
    response = httpx.post(f"{gateway.url}/v2/models/iris/infer", json=body)
    assert response.status_code == status and message in response.json()["error"], response.text
    assert "input 'input'" in response.json()["error"]


def test_flat_data_and_empty_outputs(gateway: GatewayProcess) -> None:
    """Flat data with prod(shape) values is read row-major; `outputs: []` answers every output."""
    flat = [value for row in IRIS_ROWS for value in row]
    body = {
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [3, 4], "data": flat}],
        "outputs": [],
    }
    response = httpx.post(f"{gateway.url}/v2/models/iris/infer", json=body)
    assert response.status_code == 200
    outputs = {o["name"]: o for o in response.json()["outputs"]}
    assert set(outputs) == {"label", "probabilities"} and outputs["label"]["data"] == IRIS_LABELS


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            {"outputs": [{"name": "label", "parameters": {"binary_data": "false"}}]},
            "'binary_data' must be true or false",
        ),
        ({"parameters": {"binary_data_output": 1}}, "'binary_data_output' must be true or false"),
        ({"id": 42}, "'id' must be a string"),
    ],
)
def test_loose_parameters_are_400s(
    gateway: GatewayProcess, extra: dict[str, object], message: str
) -> None:
    """A flag that is not a boolean is a 400 naming the parameter, never read as true."""
    body = {
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": IRIS_ROWS[0]}],
        **extra,
    }
    response = httpx.post(f"{gateway.url}/v2/models/iris/infer", json=body)
    assert response.status_code == 400 and message in response.json()["error"]


def test_class_count_is_refused_by_name(gateway: GatewayProcess) -> None:
    """tritonclient's class_count (classification extension) is a 400 naming it, never ignored."""
    client = triton.InferenceServerClient(gateway.url.removeprefix("http://"))
    tensor = triton.InferInput("input", [1, 4], "FP32")
    tensor.set_data_from_numpy(np.array(IRIS_ROWS[:1], np.float32))
    with pytest.raises(InferenceServerException, match="classification"):
        client.infer(
            "iris", [tensor], outputs=[triton.InferRequestedOutput("probabilities", class_count=2)]
        )
    assert client.infer("iris", [tensor]).as_numpy("label").tolist() == IRIS_LABELS[:1]
    client.close()


def test_v1_columnar_form(gateway: GatewayProcess) -> None:
    """{"inputs": batch} on :predict answers {"outputs": {name: batch}} (TF Serving columnar)."""
    response = httpx.post(f"{gateway.url}/v1/models/iris:predict", json={"inputs": IRIS_ROWS})
    assert response.status_code == 200
    outputs = response.json()["outputs"]
    assert outputs["label"] == IRIS_LABELS and np.array(outputs["probabilities"]).shape == (3, 3)


def test_type_confused_admin_bodies_change_nothing(gateway: GatewayProcess) -> None:
    """A bool or a string is not a weight, a bool not a revision: 400 naming the field, state kept."""
    admin = f"{gateway.url}/admin/models/iris"
    before = httpx.get(admin, headers=ADMIN).json()
    for path, body, field in [
        ("/canary", {"variant": "green", "weight": True}, "weight"),
        ("/canary", {"variant": "green", "weight": "0.3"}, "weight"),
        ("/rollback", {"to_revision": True}, "to_revision"),
        ("/shadows", [{"variant": "mlp", "sample": False}], "sample"),
    ]:
        method = "POST" if path == "/rollback" else "PUT"
        response = httpx.request(method, admin + path, json=body, headers=ADMIN)
        assert response.status_code == 400 and field in response.json()["error"], response.text
    assert httpx.get(admin, headers=ADMIN).json() == before
    served = httpx.post(f"{gateway.url}/v2/models/iris/infer", json=iris_body())
    assert served.headers["x-gateway-variant"] == before["live"]


def test_shadow_with_renamed_outputs_agrees(gateway: GatewayProcess, tmp_path: Path) -> None:
    """A shadow whose outputs carry other names is compared by position, and its record says so."""
    shadows = [{"variant": "renamed", "sample": 1.0}]
    httpx.put(f"{gateway.url}/admin/models/iris/shadows", json=shadows, headers=ADMIN)
    httpx.post(f"{gateway.url}/v2/models/iris/infer", json=iris_body(IRIS_ROWS))
    log = tmp_path / "data" / "shadow" / "iris.jsonl"
    record = json.loads(wait_until(lambda: log.exists() and log.read_text().splitlines()[0]))
    assert record["compared"] == "label=predicted,probabilities=scores"
    assert (
        record["agree"] == "1" and json.loads(record["shadow_output"])["predicted"] == IRIS_LABELS
    )
