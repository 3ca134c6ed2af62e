"""Graceful shutdown of a real `gateway serve` (README "Graceful shutdown"): SIGTERM drains,
requests in flight finish, the shadow log is flushed and the process exits 0; SIGINT stops."""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx
import pytest
import yaml
from onnx import TensorProto, helper, numpy_helper
from prometheus_client.parser import text_string_to_metric_families
from support import (
    ROOT,
    GatewayProcess,
    RedisServer,
    base_config,
    iris_body,
    wait_until,
)

pytestmark = pytest.mark.e2e

DRAIN_S = 1.0
# A request of SLOW_ROWS rows on `slower` takes about 2 s on one core here, twice the drain;
# the start-up warm-up, with one or two rows, takes next to nothing.
SLOW_ROWS = 4000
SLOW_LAYERS = 72


def make_row_bound_model(path: Path, width: int = 512, layers: int = SLOW_LAYERS) -> None:
    """Iris-shaped input, one score per row, after `layers` products of a [rows, width]
    matrix: its run time grows with the rows of the request."""
    weights = {
        "widen": np.full((4, width), 0.25, dtype=np.float32),
        "square": np.eye(width, dtype=np.float32),
    }
    nodes = [helper.make_node("MatMul", ["input", "widen"], ["h0"])]
    for i in range(layers):
        nodes.append(helper.make_node("MatMul", [f"h{i}", "square"], [f"h{i + 1}"]))
    nodes.append(helper.make_node("ReduceSum", [f"h{layers}", "axis"], ["scores"], keepdims=0))
    graph = helper.make_graph(
        nodes, "row_bound",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch"])],
        [numpy_helper.from_array(v, name=k) for k, v in weights.items()]
        + [numpy_helper.from_array(np.array([1], dtype=np.int64), name="axis")],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


@pytest.fixture
def shutdown_config(tmp_path: Path, model_repo: Path) -> Callable[..., Path]:
    """Write a config with a short drain and iris shadowed by mlp (sample 1.0); `slow=True`
    adds the variant `slower`, whose run outlasts the drain."""

    def write(slow: bool = False, **overrides: Any) -> Path:
        config = base_config(model_repo, tmp_path / "data")
        iris = config["models"]["iris"]
        iris["routing"]["shadows"] = [{"variant": "mlp", "sample": 1.0}]
        if slow:
            make_row_bound_model(model_repo / "iris" / "slower" / "model.onnx")
            iris["variants"]["slower"] = {"path": "iris/slower/model.onnx"}
        config.update(drain_s=DRAIN_S, shutdown_timeout_s=10.0, request_timeout_s=30.0)
        config.update(overrides)
        path = tmp_path / "gateway.yaml"
        path.write_text(yaml.safe_dump(config))
        return path

    return write


class SlowRequest(threading.Thread):
    """One inference of SLOW_ROWS rows on `slower` in a thread; its answer and when it came."""

    def __init__(self, url: str) -> None:
        super().__init__()
        self.url = url
        self.answer: httpx.Response | None = None
        self.answered_at = 0.0
        self.start()

    def run(self) -> None:
        path = "/v2/models/iris/versions/slower/infer"
        body = iris_body([[5.1, 3.5, 1.4, 0.2]] * SLOW_ROWS)
        self.answer = httpx.post(f"{self.url}{path}", json=body, timeout=30)
        self.answered_at = time.monotonic()


def inflight(gateway: GatewayProcess) -> float:
    text = httpx.get(f"{gateway.url}/metrics", timeout=2).text
    families = {family.name: family for family in text_string_to_metric_families(text)}
    return float(families["gateway_inflight_requests"].samples[0].value)


def draining_ready(gateway: GatewayProcess) -> httpx.Response | None:
    """The readiness answer once it says the gateway drains, else None."""
    answer = httpx.get(f"{gateway.url}/v2/health/ready", timeout=2)
    return answer if answer.status_code == 503 else None


def refused(gateway: GatewayProcess) -> bool:
    """Whether a new connection to the gateway's port is refused (nothing listens there)."""
    try:
        socket.create_connection(("127.0.0.1", gateway.port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def infer(gateway: GatewayProcess, request_id: str) -> httpx.Response:
    """An iris inference on a new connection."""
    headers = {"x-request-id": request_id}
    return httpx.post(f"{gateway.url}/v2/models/iris/infer", json=iris_body(), headers=headers)


def shadow_records(data_dir: Path) -> list[dict[str, Any]]:
    lines = (data_dir / "shadow" / "iris.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def test_sigterm_drains_finishes_in_flight_and_exits_0(
    shutdown_config: Callable[..., Path],
    start_gateway: Callable[..., GatewayProcess],
    tmp_path: Path,
) -> None:
    """After SIGTERM: ready answers 503 within the drain while inference still answers 200
    (with Connection: close); after the drain new connections are refused; a request in flight
    since before SIGTERM outlasts the drain and
    answers 200; the shadow record of a request answered just before SIGTERM is in the file;
    the process exits 0."""
    gateway = start_gateway(shutdown_config(slow=True))
    assert infer(gateway, "just-before-sigterm").status_code == 200
    slow = SlowRequest(gateway.url)
    wait_until(lambda: inflight(gateway) >= 1, timeout=10)
    sigterm_at = time.monotonic()
    os.kill(gateway.process.pid, signal.SIGTERM)

    ready = wait_until(lambda: draining_ready(gateway), timeout=DRAIN_S)
    assert "draining" in ready.json()["error"] and ready.headers["connection"] == "close"
    model_ready = httpx.get(f"{gateway.url}/v2/models/iris/ready")
    assert model_ready.status_code == 503 and "draining" in model_ready.json()["error"]
    during = infer(gateway, "during-the-drain")
    assert during.status_code == 200 and during.headers["connection"] == "close"
    # The drain over, the port stops listening while the request in flight still runs.
    wait_until(lambda: refused(gateway), timeout=DRAIN_S + 10)
    assert gateway.process.poll() is None and slow.answer is None

    assert gateway.process.wait(timeout=30) == 0
    slow.join(timeout=30)
    assert slow.answer is not None and slow.answer.status_code == 200, slow.answer
    assert slow.answered_at - sigterm_at > DRAIN_S  # still running when the shutdown began
    assert slow.answer.headers["connection"] == "close"  # in flight when the drain began
    output = gateway.output()
    assert output.index("drain over") < output.index("Shutting down")
    assert "Application shutdown complete." in output
    request_ids = {record["request_id"] for record in shadow_records(tmp_path / "data")}
    assert {"just-before-sigterm", "during-the-drain"} <= request_ids


def test_sigterm_to_the_group_drains_every_worker(
    shutdown_config: Callable[..., Path],
    start_gateway: Callable[..., GatewayProcess],
    redis_server: RedisServer,
) -> None:
    """With --workers 2, SIGTERM to the whole process group (supervisor and workers, as
    systemd does): ready turns 503, inference still answers, each worker drains the whole
    drain_s (the supervisor's second SIGTERM does not cut it short) and everything exits 0."""
    gateway = start_gateway(shutdown_config(redis_url=redis_server.url), workers=2)
    sigterm_at = time.monotonic()
    os.killpg(gateway.process.pid, signal.SIGTERM)
    wait_until(lambda: draining_ready(gateway), timeout=DRAIN_S)
    assert infer(gateway, "during-the-drain").status_code == 200
    assert gateway.process.wait(timeout=30) == 0
    assert time.monotonic() - sigterm_at >= DRAIN_S
    output = gateway.output()
    assert output.count("drain over") == 2
    assert output.count("Application shutdown complete.") == 2


def test_sigint_stops_at_once(
    shutdown_config: Callable[..., Path], start_gateway: Callable[..., GatewayProcess]
) -> None:
    """SIGINT (Ctrl-C) stops at once, with no drain, through the clean shutdown; exit 0."""
    gateway = start_gateway(shutdown_config(drain_s=60))
    os.kill(gateway.process.pid, signal.SIGINT)
    assert gateway.process.wait(timeout=10) == 0
    output = gateway.output()
    assert "draining" not in output and "Application shutdown complete." in output


def test_sigint_ends_a_drain(
    shutdown_config: Callable[..., Path], start_gateway: Callable[..., GatewayProcess]
) -> None:
    """SIGINT during a long drain starts the shutdown at once; exit 0."""
    gateway = start_gateway(shutdown_config(drain_s=60))
    os.kill(gateway.process.pid, signal.SIGTERM)
    wait_until(lambda: draining_ready(gateway), timeout=5)
    os.kill(gateway.process.pid, signal.SIGINT)
    assert gateway.process.wait(timeout=10) == 0
    assert "Application shutdown complete." in gateway.output()


def test_rolling_restart_under_load_loses_no_request(tmp_path: Path) -> None:
    """loadtests/rolling_restart.py: two replicas behind its balancer, each restarted once under
    locust load (SIGTERM, drain, exit, start again): no failed request, every exit code 0."""
    command = [sys.executable, str(ROOT / "loadtests" / "rolling_restart.py"),
               "--restarts", "2", "--users", "4", "--settle", "1", "--out", str(tmp_path)]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    figures = json.loads((tmp_path / "summary.json").read_text())
    assert figures["requests"] > 0 and figures["failures"] == 0, figures["failure_reasons"]
    assert figures["exit_codes"] == [0, 0]
    assert [r["replica"] for r in figures["rounds"]] == [0, 1]
