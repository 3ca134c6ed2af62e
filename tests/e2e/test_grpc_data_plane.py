"""The OIP v2 over gRPC of a real `gateway serve`, through tritonclient.grpc unchanged: metadata,
typed and raw inference equal to the HTTP answers, a canary split, status codes, fuzzed input."""

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.grpc.aio as triton_aio
import tritonclient.http as triton_http
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.stats import binom
from support import (
    ADMIN,
    IRIS_ROWS,
    MODELS,
    GatewayProcess,
    base_config,
    free_port,
    make_slow_model,
    wait_until,
)
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc
from tritonclient.utils import InferenceServerException

pytestmark = pytest.mark.e2e

ROWS = np.array(IRIS_ROWS, dtype=np.float32)


class Served:
    """One gateway with gRPC on, and clients of both of its ports."""

    def __init__(self, process: GatewayProcess, grpc_port: int, data_dir: Path) -> None:
        self.process = process
        self.target = f"127.0.0.1:{grpc_port}"
        self.data_dir = data_dir
        self.grpc = triton_grpc.InferenceServerClient(self.target)
        self.http = triton_http.InferenceServerClient(process.url.removeprefix("http://"))
        self.channel = grpc.insecure_channel(self.target)
        self.stub = pb_grpc.GRPCInferenceServiceStub(self.channel)

    def close(self) -> None:
        self.grpc.close()
        self.http.close()
        self.channel.close()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """iris (live blue, shadow mlp) and mlp; `iris/slow` (about half a second a run) behind a
    queue of one as variant `queued`."""
    tmp = tmp_path_factory.mktemp("grpc")
    repo = tmp / "models"
    shutil.copytree(MODELS, repo, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    make_slow_model(repo / "iris" / "slow" / "model.onnx")
    config = base_config(repo, tmp / "data")
    iris = config["models"]["iris"]
    del iris["variants"]["failing"]
    iris["variants"]["queued"] = {"path": "iris/slow/model.onnx", "max_queue_size": 1}
    iris["routing"]["shadows"] = [{"variant": "mlp", "sample": 1.0}]
    (tmp / "gateway.yaml").write_text(yaml.safe_dump(config))
    port = free_port()
    env = {"GATEWAY_GRPC_PORT": str(port), "GATEWAY_ADMIN_TOKEN": "secret"}
    process = GatewayProcess(tmp / "gateway.yaml", 1, env, tmp / "gateway.log")
    try:
        process.wait_ready()
        served = Served(process, port, tmp / "data")
        yield served
        served.close()
    finally:
        process.stop()


def iris_input(rows: np.ndarray = ROWS) -> triton_grpc.InferInput:
    tensor = triton_grpc.InferInput("input", list(rows.shape), "FP32")
    tensor.set_data_from_numpy(rows)  # raw_input_contents, as tritonclient.grpc sends
    return tensor


def typed_request(rows: np.ndarray = ROWS, **fields: Any) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="iris", **fields)
    tensor = request.inputs.add(name="input", datatype="FP32", shape=list(rows.shape))
    tensor.contents.fp32_contents.extend(rows.ravel().tolist())
    return request


def status_of(call: Any) -> grpc.StatusCode:
    """The status code an RPC ended with (raised as tritonclient or grpcio raise it)."""
    with pytest.raises((InferenceServerException, grpc.RpcError)) as caught:
        call()
    error = caught.value
    if isinstance(error, grpc.RpcError):
        return error.code()  # type: ignore[attr-defined, no-any-return]
    return getattr(grpc.StatusCode, str(error.status()).removeprefix("StatusCode."))  # type: ignore[no-any-return]


def test_metadata_matches_http(served: Served) -> None:
    """Health, server and model metadata over gRPC say what the HTTP routes say."""
    client = served.grpc
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("iris") and client.is_model_ready("iris", "green")
    assert client.get_server_metadata().name == "model-gateway"
    for version in ("", "queued"):
        over_grpc = client.get_model_metadata("iris", version, as_json=True)
        over_http = served.http.get_model_metadata("iris", version)
        assert over_grpc["versions"] == over_http["versions"]
        for field in ("inputs", "outputs"):
            tensors = [
                {**t, "shape": [int(d) for d in t.get("shape", [])]} for t in over_grpc[field]
            ]
            assert tensors == over_http[field]
    assert status_of(lambda: client.get_model_metadata("nope")) == grpc.StatusCode.NOT_FOUND
    assert status_of(lambda: client.is_model_ready("iris", "red")) == grpc.StatusCode.NOT_FOUND


def test_raw_and_typed_answers_equal_http(served: Served) -> None:
    """tritonclient.grpc's raw tensors and a typed request get the HTTP answer, exactly; raw in
    gives raw out, typed in gives typed out; routing comes back as trailing metadata."""
    http_input = triton_http.InferInput("input", list(ROWS.shape), "FP32")
    http_input.set_data_from_numpy(ROWS)
    expected = served.http.infer("iris", [http_input])
    raw = served.grpc.infer("iris", [iris_input()])
    assert len(raw.get_response().raw_output_contents) == 2
    typed, call = served.stub.ModelInfer.with_call(typed_request(id="typed-1"))
    assert not typed.raw_output_contents and typed.id == "typed-1"
    labels = np.array(typed.outputs[0].contents.int64_contents)
    scores = np.array(typed.outputs[1].contents.fp32_contents, np.float32).reshape(3, 3)
    for name, typed_values in (("label", labels), ("probabilities", scores)):
        np.testing.assert_array_equal(raw.as_numpy(name), expected.as_numpy(name))
        np.testing.assert_array_equal(typed_values, expected.as_numpy(name))
    trailing = dict(call.trailing_metadata())
    assert trailing == {
        "x-request-id": "typed-1",
        "x-gateway-variant": "blue",
        "x-gateway-role": "live",
        "x-gateway-revision": trailing["x-gateway-revision"],
    }


def test_canary_split_within_binomial_bounds_and_sticky(served: Served) -> None:
    """A 30% canary takes a binomial share of 200 routed RPCs; a sticky user keeps its variant."""
    url = served.process.url
    answer = httpx.put(
        f"{url}/admin/models/iris/canary", json={"variant": "green", "weight": 0.3}, headers=ADMIN
    )
    assert answer.status_code == 200
    try:
        request, n = typed_request(ROWS[:1]), 200
        roles = [
            dict(served.stub.ModelInfer.with_call(request)[1].trailing_metadata())["x-gateway-role"]
            for _ in range(n)
        ]
        low, high = binom.interval(0.999, n, 0.3)
        assert low <= roles.count("canary") <= high, roles.count("canary")
        assert set(roles) == {"live", "canary"}
        sticky = {
            dict(
                served.stub.ModelInfer.with_call(request, metadata=[("x-user-id", "ada")])[
                    1
                ].trailing_metadata()
            )["x-gateway-variant"]
            for _ in range(10)
        }
        assert len(sticky) == 1
    finally:
        httpx.delete(f"{url}/admin/models/iris/canary", headers=ADMIN)


def test_errors_map_to_status_codes(served: Served) -> None:
    """Unknown model or variant NOT_FOUND; wrong shape, datatype, name, contents or bytes
    INVALID_ARGUMENT; an RPC the gateway does not serve UNIMPLEMENTED; the server answers on."""
    client, stub = served.grpc, served.stub
    assert status_of(lambda: client.infer("nope", [iris_input()])) == grpc.StatusCode.NOT_FOUND
    assert status_of(lambda: client.infer("iris", [iris_input()], model_version="red")) == (
        grpc.StatusCode.NOT_FOUND
    )
    wrong_shape = triton_grpc.InferInput("input", [3, 3], "FP32")
    wrong_shape.set_data_from_numpy(np.zeros((3, 3), np.float32))
    wrong_type = triton_grpc.InferInput("input", [1, 4], "FP64")
    wrong_type.set_data_from_numpy(np.zeros((1, 4), np.float64))
    for tensor in (wrong_shape, wrong_type):
        assert status_of(lambda: client.infer("iris", [tensor])) == grpc.StatusCode.INVALID_ARGUMENT  # noqa: B023
    mixed = typed_request()
    mixed.inputs[0].contents.int_contents.append(1)
    short = typed_request()
    short.inputs[0].shape[:] = [4, 4]
    unreadable = served.channel.unary_unary(
        "/inference.GRPCInferenceService/ModelInfer",
        request_serializer=lambda data: data,
        response_deserializer=lambda data: data,
    )
    for call in (
        lambda: stub.ModelInfer(mixed),
        lambda: stub.ModelInfer(short),
        lambda: unreadable(b"\xff\xff\xff"),
    ):
        assert status_of(call) == grpc.StatusCode.INVALID_ARGUMENT
    statistics = served.channel.unary_unary("/inference.GRPCInferenceService/ModelStatistics")
    assert status_of(lambda: statistics(b"")) == grpc.StatusCode.UNIMPLEMENTED
    assert client.is_server_live()


async def test_full_queue_is_resource_exhausted_with_retry_info(served: Served) -> None:
    """Six callers at once on a queue of one: the refused get RESOURCE_EXHAUSTED at once with
    retry-after and grpc-retry-pushback-ms in their trailing metadata; the admitted are served."""
    request = typed_request(ROWS[:1], model_version="queued")
    async with grpc.aio.insecure_channel(served.target) as channel:
        infer = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer
        calls = [infer(request) for _ in range(6)]
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
        codes = [getattr(o, "code", lambda: grpc.StatusCode.OK)() for o in outcomes]
        assert grpc.StatusCode.OK in codes and grpc.StatusCode.RESOURCE_EXHAUSTED in codes, codes
        refused = next(o for o in outcomes if isinstance(o, grpc.aio.AioRpcError))
        trailing = dict(refused.trailing_metadata())
        assert int(trailing["grpc-retry-pushback-ms"]) == 1000 * int(trailing["retry-after"]) > 0
        assert trailing["x-gateway-variant"] == "queued"


async def test_deadlines_are_deadline_exceeded(served: Served) -> None:
    """Triton's `timeout` parameter and the gRPC deadline both end a slow run with
    DEADLINE_EXCEEDED; the server answers on."""
    client = triton_aio.InferenceServerClient(served.target)
    try:
        for kwargs in ({"timeout": 100_000}, {"client_timeout": 0.1}):
            with pytest.raises(InferenceServerException) as caught:
                await client.infer("iris", [iris_input(ROWS[:1])], model_version="queued", **kwargs)
            assert caught.value.status() == "StatusCode.DEADLINE_EXCEEDED"
        assert await client.is_server_live()
    finally:
        await client.close()


def test_answers_are_counted_shadowed_and_logged(served: Served) -> None:
    """gRPC answers count in gateway_requests_total like HTTP's (code: the HTTP status), and a
    routed one is mirrored to the shadow, whose record carries its request id."""

    def count(code: str) -> float:
        text = httpx.get(f"{served.process.url}/metrics").text
        line = f'gateway_requests_total{{code="{code}",model="iris",role="direct",variant="green"}}'
        return sum(float(row.split()[-1]) for row in text.splitlines() if row.startswith(line))

    before = count("200"), count("400")
    for _ in range(3):
        served.stub.ModelInfer(typed_request(model_version="green"))
    status_of(lambda: served.stub.ModelInfer(typed_request(ROWS[0], model_version="green")))
    assert (count("200"), count("400")) == (before[0] + 3, before[1] + 1)
    served.stub.ModelInfer(typed_request(), metadata=[("x-request-id", "shadowed-1")])
    log = served.data_dir / "shadow" / "iris.jsonl"

    def shadowed() -> bool:
        lines = log.read_text().splitlines() if log.exists() else []
        return any(json.loads(line)["request_id"] == "shadowed-1" for line in lines)

    wait_until(shadowed, timeout=10)


DATATYPES = ["FP32", "FP64", "INT64", "INT8", "UINT8", "BOOL", "FP16", "BYTES", "", "XYZ"]


@st.composite
def infer_requests(draw: st.DrawFn) -> pb.ModelInferRequest:
    """Random ModelInfer requests: names, datatypes, shapes, raw bytes or typed values."""
    request = pb.ModelInferRequest(
        model_name=draw(st.sampled_from(["iris", "mlp", "nope", ""])),
        model_version=draw(st.sampled_from(["", "", "green", "red"])),
    )
    raw = draw(st.booleans())
    for _ in range(draw(st.integers(0, 2))):
        tensor = request.inputs.add(
            name=draw(st.sampled_from(["input", "x", ""])),
            datatype=draw(st.sampled_from(DATATYPES)),
            shape=draw(st.lists(st.integers(-2, 6), max_size=4)),
        )
        if raw:
            request.raw_input_contents.append(draw(st.binary(max_size=96)))
        else:
            tensor.contents.fp32_contents.extend(draw(st.lists(st.floats(width=32), max_size=24)))
            tensor.contents.int64_contents.extend(draw(st.lists(st.integers(-3, 3), max_size=2)))
    if draw(st.booleans()):
        request.outputs.add(name=draw(st.sampled_from(["label", "probabilities", "nope"])))
    return request


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(request=infer_requests())
def test_fuzzed_requests_never_break_the_server(
    served: Served, request: pb.ModelInferRequest
) -> None:
    """Any request is answered OK or refused as the client's fault, never INTERNAL or UNKNOWN."""
    try:
        answer = served.stub.ModelInfer(request, timeout=10)
    except grpc.RpcError as error:
        assert error.code() in {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND}, error  # type: ignore[attr-defined]
    else:
        assert answer.model_name == request.model_name and answer.outputs


def test_workers_share_the_grpc_port(
    tmp_path: Path, write_config: Any, redis_server: Any, start_gateway: Any
) -> None:
    """With --workers 2 both workers serve gRPC on the one port (SO_REUSEPORT): new connections
    reach both (each worker's generated request ids have their own prefix)."""
    port = free_port()
    mlp = {"variants": {"v1": {"path": "mlp/1/model.onnx"}}, "routing": {"live": "v1"}}
    config = write_config(redis_url=redis_server.url, models={"mlp": mlp})
    gateway = start_gateway(config, workers=2, GATEWAY_GRPC_PORT=str(port))
    prefixes = set()
    deadline = time.monotonic() + 20
    while len(prefixes) < 2 and time.monotonic() < deadline:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            request = pb.ModelInferRequest(model_name="mlp")
            tensor = request.inputs.add(name="input", datatype="FP32", shape=[1, 64])
            tensor.contents.fp32_contents.extend([0.5] * 64)
            _, call = stub.ModelInfer.with_call(request)
            prefixes.add(dict(call.trailing_metadata())["x-request-id"].split("-")[0])
    assert len(prefixes) == 2
    assert gateway.process.poll() is None


def test_a_grpc_port_in_use_stops_start_up_with_one_message(served: Served) -> None:
    """A second gateway on the same grpc_port exits 2 with the gateway's one-line message,
    before loading anything, as for every other start-up problem: no traceback."""
    command = [sys.executable, "-m", "gateway", "serve", "--config",
               str(served.data_dir.parent / "gateway.yaml"), "--port", str(free_port())]  # fmt: skip
    port = served.target.rsplit(":", 1)[1]
    env = {**os.environ, "GATEWAY_GRPC_PORT": port}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert f"gateway: grpc_port: cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr
