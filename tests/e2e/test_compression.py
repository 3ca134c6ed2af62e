"""gzip and deflate bodies both ways, through a real `gateway serve` process."""

import gzip
import json
import shutil
import subprocess
import zlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from support import IRIS_LABELS, IRIS_ROWS, MODELS, GatewayProcess, iris_body, serving

pytestmark = pytest.mark.e2e

INFER = "/v2/models/iris/infer"
ROWS = IRIS_ROWS * 100  # answers of a few KiB: over compress_above_bytes
LABELS = IRIS_LABELS * 100


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """One gateway for the module, serving the bundled iris."""
    tmp = tmp_path_factory.mktemp("compression")
    config = {
        "model_repository": str(MODELS),
        "data_dir": str(tmp / "data"),
        "models": {"iris": {"variants": {"blue": {"path": "iris/1/model.onnx"}}, "routing": {"live": "blue"}}},
    }  # fmt: skip
    with serving(config, tmp) as gateway:
        yield gateway


def raw_post(gateway: GatewayProcess, body: bytes, **headers: str) -> tuple[httpx.Headers, bytes]:
    """POST to the infer route; the answer's headers and its bytes as they came, not decoded."""
    headers = {key.replace("_", "-"): value for key, value in headers.items()}
    headers.setdefault("accept-encoding", "identity")  # httpx asks for gzip by default
    with httpx.stream("POST", f"{gateway.url}{INFER}", content=body, headers=headers) as response:
        return response.headers, b"".join(response.iter_raw())


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_tritonclient_compression_both_ways(gateway: GatewayProcess, binary: bool) -> None:
    """tritonclient with request_compression_algorithm and response_compression_algorithm set
    to gzip, deflate or None, in every pairing, gets exactly the uncompressed run's values."""
    client = triton.InferenceServerClient(gateway.url.removeprefix("http://"))
    tensor = triton.InferInput("input", [len(ROWS), 4], "FP32")
    tensor.set_data_from_numpy(np.array(ROWS, np.float32), binary_data=binary)
    outputs = [
        triton.InferRequestedOutput(name, binary_data=binary) for name in ("label", "probabilities")
    ]
    plain = client.infer("iris", [tensor], outputs=outputs)
    assert plain.as_numpy("label").tolist() == LABELS
    for sent in ("gzip", "deflate", None):
        for asked in ("gzip", "deflate", None):
            result = client.infer(
                "iris",
                [tensor],
                outputs=outputs,
                request_compression_algorithm=sent,
                response_compression_algorithm=asked,
            )
            assert result.as_numpy("label").tolist() == LABELS, (sent, asked)
            assert np.array_equal(
                result.as_numpy("probabilities"), plain.as_numpy("probabilities")
            ), (sent, asked)
    client.close()


@pytest.mark.parametrize(
    ("coding", "decompress"), [("gzip", gzip.decompress), ("deflate", zlib.decompress)]
)
def test_a_binary_answer_is_compressed_whole_with_the_json_length(
    gateway: GatewayProcess, coding: str, decompress: object
) -> None:
    """A compressed binary answer: Content-Encoding and Vary set, the whole body compressed,
    Inference-Header-Content-Length the length of the uncompressed JSON part."""
    request = {
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [len(ROWS), 4], "data": ROWS}],
        "outputs": [{"name": "label", "parameters": {"binary_data": True}}],
    }
    headers, raw = raw_post(gateway, json.dumps(request).encode(), accept_encoding=coding)
    assert headers["content-encoding"] == coding and headers["vary"] == "accept-encoding"
    body = decompress(raw)  # type: ignore[operator]
    assert int(headers["content-length"]) == len(raw) < len(body)
    header = json.loads(body[: int(headers["inference-header-content-length"])])
    assert header["outputs"][0]["parameters"]["binary_data_size"] == len(ROWS) * 8
    assert np.frombuffer(body[-len(ROWS) * 8 :], np.int64).tolist() == LABELS


def test_raw_gzip_bodies_from_httpx_and_curl(gateway: GatewayProcess, tmp_path: Path) -> None:
    """A gzip body posted by hand (httpx, curl --compressed) is decoded, and so is the answer."""
    body = gzip.compress(json.dumps(iris_body(ROWS)).encode())
    response = httpx.post(
        f"{gateway.url}{INFER}", content=body, headers={"content-encoding": "gzip"}
    )
    assert response.headers["content-encoding"] == "gzip"  # httpx asks for it by default
    assert response.json()["outputs"][0]["data"] == LABELS
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed")
    (tmp_path / "body.json.gz").write_bytes(body)
    answer = subprocess.run(
        [curl, "-sS", "--compressed", "-H", "content-encoding: gzip", "--data-binary",
         f"@{tmp_path / 'body.json.gz'}", f"{gateway.url}{INFER}"],
        capture_output=True, check=True, timeout=30,
    )  # fmt: skip
    assert json.loads(answer.stdout)["outputs"][0]["data"] == LABELS


def test_small_answers_and_plain_clients_are_not_compressed(gateway: GatewayProcess) -> None:
    """Under compress_above_bytes, or without Accept-Encoding, answers go as they are."""
    small_headers, small = raw_post(
        gateway, json.dumps(iris_body()).encode(), accept_encoding="gzip"
    )
    assert "content-encoding" not in small_headers and json.loads(small)["outputs"]
    big_headers, big = raw_post(gateway, json.dumps(iris_body(ROWS)).encode())
    assert "content-encoding" not in big_headers and len(big) > 1024
    refused_headers, _ = raw_post(
        gateway, json.dumps(iris_body(ROWS)).encode(), accept_encoding="gzip;q=0, br"
    )
    assert "content-encoding" not in refused_headers


def test_an_unknown_encoding_is_415_and_a_false_gzip_400(gateway: GatewayProcess) -> None:
    """br is refused with 415 naming it; a body that claims gzip and is not gzip is a 400."""
    body = json.dumps(iris_body()).encode()
    unknown = httpx.post(f"{gateway.url}{INFER}", content=body, headers={"content-encoding": "br"})
    assert unknown.status_code == 415 and "'br'" in unknown.json()["error"]
    false = httpx.post(f"{gateway.url}{INFER}", content=body, headers={"content-encoding": "gzip"})
    assert false.status_code == 400 and "gzip" in false.json()["error"]


def test_a_gzip_bomb_is_413_and_the_gateway_serves_on(gateway: GatewayProcess) -> None:
    """64 KiB of gzip that inflates to 64 MiB (over max_body_bytes, 8 MiB) is a 413."""
    bomb = zlib.compress(bytes(64 << 20), 9, 31)
    assert len(bomb) <= 64 << 10
    response = httpx.post(
        f"{gateway.url}{INFER}", content=bomb, headers={"content-encoding": "gzip"}
    )
    assert response.status_code == 413 and "decompressed" in response.json()["error"]
    assert httpx.post(f"{gateway.url}{INFER}", json=iris_body()).status_code == 200
