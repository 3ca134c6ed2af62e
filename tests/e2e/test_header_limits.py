"""Bounded request heads and request ids, through a real `gateway serve` process."""

import json
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from support import MODELS, GatewayProcess, RedisServer, iris_body, serving, wait_until

pytestmark = pytest.mark.e2e

INFER = "/v2/models/iris/infer"
LINE_ERROR = "request header line is longer than max_header_line_bytes (8192 bytes)"
HEAD_ERROR = "request head is larger than max_request_head_bytes (65536 bytes)"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("limits") / "data"


@pytest.fixture(scope="module")
def gateway(data_dir: Path) -> Iterator[GatewayProcess]:
    """One gateway for the module: the bundled iris, a shadow on every request, an access log."""
    tmp = data_dir.parent
    config = {
        "model_repository": str(MODELS),
        "data_dir": str(data_dir),
        "access_log": True,
        "models": {
            "iris": {
                "variants": {"blue": {"path": "iris/1/model.onnx"}, "green": {"path": "iris/2/model.onnx"}},
                "routing": {"live": "blue", "shadows": [{"variant": "green", "sample": 1.0}]},
            }
        },
    }  # fmt: skip
    with serving(config, tmp) as gateway:
        yield gateway


def refused(response: httpx.Response, error: str) -> bool:
    return (
        response.status_code == 431
        and response.headers["content-type"] == "application/json"
        and response.json() == {"error": error}
    )


def test_a_4_mib_request_id_is_431_and_others_are_served(gateway: GatewayProcess) -> None:
    """A 4 MiB x-request-id answers 431 {"error"} naming the head limit; the next request is served."""
    huge = httpx.post(
        f"{gateway.url}{INFER}", json=iris_body(), headers={"x-request-id": "a" * (4 << 20)}
    )
    assert refused(huge, HEAD_ERROR)
    assert httpx.post(f"{gateway.url}{INFER}", json=iris_body()).status_code == 200


def test_a_9_kib_header_line_is_431_and_the_connection_closes(gateway: GatewayProcess) -> None:
    """One 9 KiB header line answers 431 naming the line limit, and the server closes."""
    response = httpx.post(f"{gateway.url}{INFER}", json=iris_body(), headers={"x-big": "b" * 9216})
    assert refused(response, LINE_ERROR) and response.headers["connection"] == "close"
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
        sock.sendall(
            b"GET /v2/health/live HTTP/1.1\r\nhost: gw\r\nx-big: %s\r\n\r\n" % (b"b" * 9216)
        )
        data = b""
        while chunk := sock.recv(65536):  # until the server closes
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 431 ") and json.loads(body) == {"error": LINE_ERROR}


def test_many_1_kib_headers_over_64_kib_are_431(gateway: GatewayProcess) -> None:
    """80 headers of 1 KiB each (each line under its limit, the head over its own) answer 431."""
    headers = {f"x-header-{i}": "c" * 1024 for i in range(80)}
    assert refused(
        httpx.post(f"{gateway.url}{INFER}", json=iris_body(), headers=headers), HEAD_ERROR
    )
    at_limit = {f"x-header-{i}": "c" * 1024 for i in range(50)}  # about 52 KiB: served
    assert (
        httpx.post(f"{gateway.url}{INFER}", json=iris_body(), headers=at_limit).status_code == 200
    )


@pytest.mark.parametrize(
    "given",
    ["d" * 257, "d" * 300, "with space", "tab\there", "caf\u00e9"],
    ids=["257", "300", "space", "tab", "latin-1"],
)
def test_a_long_or_unsafe_request_id_header_is_replaced(
    gateway: GatewayProcess, data_dir: Path, given: str
) -> None:
    """A x-request-id over 256 characters or not visible ASCII is ignored: the answer, the access
    log and the shadow log carry a generated id instead."""
    response = httpx.post(
        f"{gateway.url}{INFER}",
        json=iris_body(),
        headers={b"x-request-id": given.encode("latin-1")},
    )
    generated = response.headers["x-request-id"]
    assert response.status_code == 200 and generated != given and response.json()["id"] == generated
    shadow_log = data_dir / "shadow" / "iris.jsonl"

    def logged() -> bool:
        access = [line for line in gateway.output().splitlines() if generated in line]
        shadows = [r for r in shadow_log.read_text().splitlines() if generated in r]
        return bool(access and shadows)

    wait_until(logged)
    assert given not in gateway.output() and given not in shadow_log.read_text()


def test_a_request_id_of_256_characters_is_echoed(gateway: GatewayProcess) -> None:
    """The longest id taken from the header, 256 visible ASCII characters, is echoed."""
    given = "e" * 255 + "~"
    response = httpx.post(
        f"{gateway.url}{INFER}", json=iris_body(), headers={"x-request-id": given}
    )
    assert response.headers["x-request-id"] == given and response.json()["id"] == given


@pytest.mark.redis
def test_configured_limits_reach_every_worker(
    write_config: Callable[..., Path],
    start_gateway: Callable[..., GatewayProcess],
    redis_server: RedisServer,
) -> None:
    """With --workers 2, limits set in the config file hold on every connection."""
    config = write_config(
        redis_url=redis_server.url, max_header_line_bytes=1024, max_request_head_bytes=4096
    )
    gateway = start_gateway(config, workers=2)
    line = {"x-line": "f" * 1100}
    head = {f"x-h{i}": "g" * 900 for i in range(5)}
    for _ in range(10):  # fresh connections: the kernel spreads them over both workers
        line_refused = httpx.post(f"{gateway.url}{INFER}", json=iris_body(), headers=line)
        assert line_refused.status_code == 431 and "(1024 bytes)" in line_refused.json()["error"]
        head_refused = httpx.post(f"{gateway.url}{INFER}", json=iris_body(), headers=head)
        assert head_refused.status_code == 431 and "(4096 bytes)" in head_refused.json()["error"]
        assert httpx.post(f"{gateway.url}{INFER}", json=iris_body()).status_code == 200
