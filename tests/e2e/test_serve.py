"""`gateway serve` as a real process: HTTP clients, tritonclient, config errors, concurrency."""

import json
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
import yaml
from prometheus_client.parser import text_string_to_metric_families
from support import IRIS_LABELS, IRIS_ROWS, ROOT, GatewayProcess, iris_body, wait_until

pytestmark = pytest.mark.e2e


@pytest.fixture
def gateway(
    write_config: Callable[..., Path], start_gateway: Callable[..., GatewayProcess]
) -> GatewayProcess:
    return start_gateway(write_config())


def test_infer_and_predict_over_http(gateway: GatewayProcess) -> None:
    """A real process answers v2 infer and v1 predict with correct iris classes."""
    infer = httpx.post(f"{gateway.url}/v2/models/iris/infer", json=iris_body(IRIS_ROWS))
    assert infer.status_code == 200 and infer.json()["outputs"][0]["data"] == IRIS_LABELS
    assert infer.headers["x-gateway-variant"] == "blue"
    predict = httpx.post(f"{gateway.url}/v1/models/iris:predict", json={"instances": IRIS_ROWS})
    assert [p["label"] for p in predict.json()["predictions"]] == IRIS_LABELS


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_tritonclient_unchanged(gateway: GatewayProcess, binary: bool) -> None:
    """tritonclient.http checks liveness, reads metadata and infers, binary and JSON tensors."""
    client = triton.InferenceServerClient(gateway.url.removeprefix("http://"))
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("iris")
    metadata = client.get_model_metadata("iris")
    assert metadata["inputs"][0]["shape"] == [-1, 4] and "green" in metadata["versions"]
    rows = np.array(IRIS_ROWS, np.float32)
    tensor = triton.InferInput("input", list(rows.shape), "FP32")
    tensor.set_data_from_numpy(rows, binary_data=binary)
    default = client.infer("iris", [tensor])  # no outputs named: binary_data_output
    assert default.as_numpy("label").tolist() == IRIS_LABELS
    np.testing.assert_allclose(default.as_numpy("probabilities").sum(axis=1), 1.0, atol=1e-5)
    outputs = [triton.InferRequestedOutput("label", binary_data=binary)]
    green = client.infer("iris", [tensor], outputs=outputs, model_version="green")
    assert green.as_numpy("label").tolist() == IRIS_LABELS
    assert green.get_response()["model_version"] == "green"
    assert green.as_numpy("probabilities") is None
    client.close()


def _read_response(sock: socket.socket) -> tuple[bytes, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    match = re.search(rb"(?i)content-length: (\d+)", head)
    assert match is not None, head
    while len(body) < int(match[1]):
        body += sock.recv(65536)
    return head, body


def _post(path: str, body: bytes, extra: bytes = b"") -> bytes:
    return (
        b"POST %s HTTP/1.1\r\nhost: gateway\r\ncontent-type: application/json\r\n%s"
        b"content-length: %d\r\n\r\n%s" % (path.encode(), extra, len(body), body)
    )


def test_answers_stay_whole_on_busy_kept_alive_connections(gateway: GatewayProcess) -> None:
    """Five connections at once, each sending requests back to back, good and bad: every
    answer is whole and is the answer to its own request (writes made while other requests are
    in flight wait for the end of the event-loop step and leave together)."""
    requests = [
        (_post("/v2/models/iris/infer", json.dumps(iris_body(IRIS_ROWS[:n])).encode()), n)
        for n in (1, 2, 3)
    ] + [(_post("/v2/models/iris/infer", b"{not json"), 0)]
    answered: list[int] = []

    def client() -> None:
        with socket.create_connection(("127.0.0.1", gateway.port), timeout=30) as sock:
            for request, rows in requests * 10:
                sock.sendall(request)
                head, answer = _read_response(sock)
                if rows:
                    assert head.split()[1] == b"200"
                    assert json.loads(answer)["outputs"][0]["data"] == IRIS_LABELS[:rows]
                else:
                    assert head.split()[1] == b"400" and b"error" in answer
                answered.append(rows)

    threads = [threading.Thread(target=client) for _ in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(answered) == 5 * 40


def test_head_and_100_continue_answers(gateway: GatewayProcess) -> None:
    """A HEAD answer (status line and headers only) and a `100 Continue` reach the client at
    once, on a kept-alive connection that then serves an inference."""
    body = json.dumps(iris_body()).encode()
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
        sock.sendall(b"HEAD /v2/health/live HTTP/1.1\r\nhost: gateway\r\n\r\n")
        data = b""
        while b"\r\n\r\n" not in data:
            data += sock.recv(65536)
        assert data.startswith(b"HTTP/1.1 200") and data.endswith(b"\r\n\r\n")
        request = _post("/v2/models/iris/infer", body, b"expect: 100-continue\r\n")
        sock.sendall(request[: -len(body)])  # the headers only: wait to be told to go on
        assert sock.recv(65536) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(body)
        head, answer = _read_response(sock)  # the connection still serves
        assert head.startswith(b"HTTP/1.1 200") and json.loads(answer)["outputs"]


def test_answers_before_a_close_are_whole(gateway: GatewayProcess) -> None:
    """Held writes go out before the server closes: `connection: close` and malformed HTTP."""
    body = json.dumps(iris_body(IRIS_ROWS)).encode()
    with socket.create_connection(("127.0.0.1", gateway.port)) as sock:
        sock.sendall(_post("/v2/models/iris/infer", body, b"connection: close\r\n"))
        head, answer = _read_response(sock)
        assert head.startswith(b"HTTP/1.1 200") and json.loads(answer)["outputs"]
        assert sock.recv(65536) == b""  # then the server closed
    with socket.create_connection(("127.0.0.1", gateway.port)) as sock:
        sock.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        head, answer = _read_response(sock)
        assert head.startswith(b"HTTP/1.1 400") and b"Invalid HTTP request" in answer
        assert sock.recv(65536) == b""


def test_bad_requests_leave_the_server_serving(gateway: GatewayProcess) -> None:
    """A burst of malformed requests gets 4xx answers and the next good request still works."""
    url = f"{gateway.url}/v2/models/iris/infer"
    bad = [b"", b"{", b"[]", b'{"inputs": 1}', b'{"inputs": [{"name": "input"}]}', b"\xff\xfe"]
    for body in bad:
        response = httpx.post(url, content=body)
        assert 400 <= response.status_code < 500 and "error" in response.json()
    assert httpx.post(url, content=b"x" * 9_000_000).status_code == 413
    assert httpx.post(url, json=iris_body()).status_code == 200


def test_slow_request_does_not_stall_others(gateway: GatewayProcess) -> None:
    """While a slow model runs, fast requests are answered: inference is off the event loop."""
    done: list[str] = []

    def slow() -> None:
        httpx.post(
            f"{gateway.url}/v2/models/iris/versions/slow/infer", json=iris_body(), timeout=30
        )
        done.append("slow")

    thread = threading.Thread(target=slow)
    thread.start()
    try:
        with httpx.Client(base_url=gateway.url) as client:
            wait_until(lambda: inflight(client) >= 1, interval=0.005)  # the slow run has started
            for _ in range(3):
                assert client.post("/v2/models/iris/infer", json=iris_body()).status_code == 200
                done.append("fast")
    finally:
        thread.join()
    assert done[:3] == ["fast"] * 3, done


def inflight(client: httpx.Client) -> float:
    for family in text_string_to_metric_families(client.get("/metrics").text):
        if family.name == "gateway_inflight_requests":
            return float(family.samples[0].value)
    raise AssertionError("gateway_inflight_requests missing")


def run_serve(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "serve", *args], capture_output=True, text=True, timeout=60,
        env=env,
    )  # fmt: skip


def bad_config(
    tmp_path: Path, change: Callable[[dict], None], write_config: Callable[..., Path]
) -> Path:  # type: ignore[type-arg]
    path = write_config()
    config = yaml.safe_load(path.read_text())
    change(config)
    path.write_text(yaml.safe_dump(config))
    return path


def _set(path: str, value: object) -> Callable[[dict], None]:  # type: ignore[type-arg]
    def change(config: dict) -> None:  # type: ignore[type-arg]
        *parents, last = path.split(".")
        for key in parents:
            config = config[key]
        config[last] = value

    return change


CONFIG_ERRORS = [
    (
        "unknown live variant",
        _set("models.iris.routing.live", "purple"),
        "models.iris: routing.live names unknown variant 'purple'",
    ),
    (
        "weight out of range",
        _set("models.iris.routing.canary", {"variant": "green", "weight": 2}),
        "models.iris.routing.canary.weight",
    ),
    (
        "missing file",
        _set("models.iris.variants.blue", {"path": "iris/9/model.onnx"}),
        "model 'iris', variant 'blue': no ONNX file",
    ),
    (
        "path escapes",
        _set("models.iris.variants.blue", {"path": "../../etc/passwd"}),
        "escapes the model repository",
    ),
    (
        "other inputs",
        _set("models.iris.variants.green", {"path": "mlp/1/model.onnx"}),
        "variant 'green': inputs",
    ),
    ("bad timeout", _set("request_timeout_s", "soon"), "request_timeout_s"),
]


@pytest.mark.parametrize(
    ("what", "change", "message"), CONFIG_ERRORS, ids=[c[0] for c in CONFIG_ERRORS]
)
def test_config_errors_exit_with_one_message(
    tmp_path: Path,
    write_config: Callable[..., Path],
    what: str,
    change: Callable[[dict], None],
    message: str,
) -> None:  # type: ignore[type-arg]
    """`gateway serve` with a bad config exits non-zero naming file/field/problem, no traceback."""
    path = bad_config(tmp_path, change, write_config)
    result = run_serve("--config", str(path))
    assert result.returncode != 0
    assert message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_broken_onnx_file_and_missing_config(
    tmp_path: Path, write_config: Callable[..., Path], model_repo: Path
) -> None:
    """A corrupt ONNX file and a config path that does not exist stop start-up cleanly."""
    (model_repo / "iris" / "1" / "model.onnx").write_bytes(b"garbage")
    result = run_serve("--config", str(write_config()))
    assert (
        result.returncode != 0
        and "failed to load" in result.stderr
        and "Traceback" not in result.stderr
    )
    missing = run_serve("--config", str(tmp_path / "nope.yaml"))
    assert missing.returncode != 0 and "cannot read config file" in missing.stderr


def test_several_workers_without_redis_are_refused(write_config: Callable[..., Path]) -> None:
    """--workers 2 in embedded mode is refused with a message saying what to do."""
    result = run_serve("--config", str(write_config()), "--workers", "2")
    assert result.returncode != 0 and "needs Redis" in result.stderr


def test_bundled_config_serves(
    start_gateway: Callable[..., GatewayProcess], tmp_path: Path
) -> None:
    """The repo's own gateway.yaml serves iris and mlp (the README's serve command)."""
    config = yaml.safe_load((ROOT / "gateway.yaml").read_text())
    config["model_repository"] = str(ROOT / "models")
    config["data_dir"] = str(tmp_path / "data")  # keep the checkout clean
    path = tmp_path / "bundled.yaml"
    path.write_text(yaml.safe_dump(config))
    gateway = start_gateway(path)
    mlp = httpx.post(
        f"{gateway.url}/v2/models/mlp/infer",
        json={
            "inputs": [{"name": "input", "datatype": "FP32", "shape": [2, 64], "data": [0.5] * 128}]
        },
    )
    assert mlp.status_code == 200 and mlp.json()["outputs"][0]["shape"] == [2, 10]


def test_access_log_lines(
    write_config: Callable[..., Path], start_gateway: Callable[..., GatewayProcess]
) -> None:
    """With access_log: true each inference writes one JSON line with id, model, variant, role, status, duration."""
    gateway = start_gateway(write_config(access_log=True))
    httpx.post(
        f"{gateway.url}/v2/models/iris/infer", json=iris_body(), headers={"x-request-id": "log-me"}
    )
    httpx.post(
        f"{gateway.url}/v2/models/iris/versions/green/infer",
        content=b"{",
        headers={"x-request-id": "bad-one"},
    )

    def lines() -> list[dict[str, object]]:
        found = [json.loads(line) for line in gateway.output().splitlines() if line.startswith("{")]
        return found if len(found) >= 2 else []

    good, bad = wait_until(lines)
    assert good["request_id"] == "log-me" and good["model"] == "iris" and good["variant"] == "blue"
    assert good["role"] == "live" and good["status"] == 200 and good["duration_ms"] > 0
    assert bad["request_id"] == "bad-one" and bad["role"] == "direct" and bad["status"] == 400


def test_no_access_log_by_default(gateway: GatewayProcess) -> None:
    """Without access_log the gateway writes no per-request lines."""
    for _ in range(5):
        httpx.post(f"{gateway.url}/v2/models/iris/infer", json=iris_body())
    assert not [line for line in gateway.output().splitlines() if line.startswith("{")]
