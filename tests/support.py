"""Test helpers: polling, request bodies, test-only ONNX models, redis-server and gateway processes."""

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx
import pytest
import yaml
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "models"
CHART = ROOT / "helm" / "model-gateway"
IRIS_ROWS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]]
IRIS_LABELS = [0, 2, 1]
# Every shadow record has these fields (the README's shadow log description); `inputs` too unless log_inputs is false.
RECORD_FIELDS = {
    "ts", "request_id", "model", "live_variant", "shadow_variant", "revision",
    "live_output", "shadow_output", "live_ms", "shadow_ms", "agree", "compared",
}  # fmt: skip


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(check: Callable[[], Any], timeout: float = 20.0, interval: float = 0.02) -> Any:
    """Poll `check` until it returns something truthy; fail the test at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = check()
        except (httpx.HTTPError, OSError):
            result = None
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)


async def wait_until_async(
    check: Callable[[], Awaitable[Any]], timeout: float = 20.0, interval: float = 0.02
) -> Any:
    """`wait_until` for a coroutine check, polled on the running event loop."""
    deadline = time.monotonic() + timeout
    while not (result := await check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(interval)
    return result


def iris_body(rows: list[list[float]] | None = None) -> dict[str, Any]:
    rows = rows or IRIS_ROWS[:1]
    return {
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [len(rows), 4], "data": rows}]
    }


# --- test-only models -------------------------------------------------------------------------


def _save(graph: onnx.GraphProto, path: Path) -> None:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


def make_echo_model(path: Path) -> Path:
    """x [batch, width] FP32 -> double = 2x, total = row sums [batch], run_rows = the rows of
    the run that made the answer [batch]: each answer says which rows it came from, and
    whether its run was batched with others."""
    two = numpy_helper.from_array(np.array(2.0, np.float32), name="two")
    axes = numpy_helper.from_array(np.array([1], np.int64), name="axes")
    graph = helper.make_graph(
        [
            helper.make_node("Mul", ["x", "two"], ["double"]),
            helper.make_node("ReduceSum", ["x", "axes"], ["total"], keepdims=0),
            helper.make_node("Shape", ["x"], ["rows"], end=1),
            helper.make_node("Expand", ["rows", "rows"], ["run_rows"]),
        ],
        "echo",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "width"])],
        [
            helper.make_tensor_value_info("double", TensorProto.FLOAT, ["batch", "width"]),
            helper.make_tensor_value_info("total", TensorProto.FLOAT, ["batch"]),
            helper.make_tensor_value_info("run_rows", TensorProto.INT64, ["batch"]),
        ],
        [two, axes],
    )  # fmt: skip
    _save(graph, path)
    return path


def make_slow_model(path: Path, rows: int = 4000, width: int = 512, layers: int = 8) -> None:
    """Iris-shaped input; expands it to a big matrix and multiplies it `layers` times (slow)."""
    weight = numpy_helper.from_array(np.eye(width, dtype=np.float32) * np.float32(0.5), name="w")
    shape = numpy_helper.from_array(np.array([rows, width], dtype=np.int64), name="shape")
    nodes = [
        helper.make_node("ReduceMean", ["input"], ["mean"], keepdims=1),
        helper.make_node("Expand", ["mean", "shape"], ["h0"]),
    ]
    for i in range(layers):
        nodes.append(helper.make_node("MatMul", [f"h{i}", "w"], [f"h{i + 1}"]))
    nodes.append(helper.make_node("ReduceSum", [f"h{layers}"], ["scores"], keepdims=0))
    graph = helper.make_graph(
        nodes, "slow",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [])],
        [weight, shape],
    )  # fmt: skip
    _save(graph, path)


def make_slow_batchable_model(path: Path, layers: int = 2) -> None:
    """Iris-shaped input -> scores = 2 * input [batch, 4], after the slow model's matmuls (their
    sum times zero is added): slow whatever the batch, and each caller's answer is its own."""
    weight = numpy_helper.from_array(np.eye(512, dtype=np.float32) * np.float32(0.5), name="w")
    shape = numpy_helper.from_array(np.array([4000, 512], dtype=np.int64), name="shape")
    two = numpy_helper.from_array(np.array(2.0, np.float32), name="two")
    zero = numpy_helper.from_array(np.array(0.0, np.float32), name="zero")
    nodes = [
        helper.make_node("ReduceMean", ["input"], ["mean"], keepdims=0),
        helper.make_node("Expand", ["mean", "shape"], ["h0"]),
        *(helper.make_node("MatMul", [f"h{i}", "w"], [f"h{i + 1}"]) for i in range(layers)),
        helper.make_node("ReduceSum", [f"h{layers}"], ["cost"], keepdims=0),
        helper.make_node("Mul", ["cost", "zero"], ["nothing"]),
        helper.make_node("Mul", ["input", "two"], ["double"]),
        helper.make_node("Add", ["double", "nothing"], ["scores"]),
    ]
    graph = helper.make_graph(
        nodes, "slow_batchable",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", 4])],
        [weight, shape, two, zero],
    )  # fmt: skip
    _save(graph, path)


def make_failing_model(path: Path) -> None:
    """Iris-shaped input that only runs for a batch of one: any larger batch raises."""
    shape = numpy_helper.from_array(np.array([1, 4], dtype=np.int64), name="shape")
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["input", "shape"], ["probabilities"])], "failing",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [1, 4])],
        [shape],
    )  # fmt: skip
    _save(graph, path)


def base_config(repo: Path, data_dir: Path) -> dict[str, Any]:
    return {
        "model_repository": str(repo),
        "data_dir": str(data_dir),
        "request_timeout_s": 5.0,
        "models": {
            "iris": {
                "variants": {
                    "blue": {"path": "iris/1/model.onnx"},
                    "green": {"path": "iris/2/model.onnx"},
                    "mlp": {"path": "iris/3/model.onnx"},
                    "slow": {"path": "iris/slow/model.onnx"},
                    "failing": {"path": "iris/failing/model.onnx"},
                },
                "routing": {"live": "blue", "sticky_header": "x-user-id"},
            },
            "mlp": {"variants": {"v1": {"path": "mlp/1/model.onnx"}}, "routing": {"live": "v1"}},
        },
    }


class RedisServer:
    """A throwaway redis-server on a free port, stopped by PID."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._directory = directory
        self.process: subprocess.Popen[bytes] | None = None
        self.persist = False  # True: append-only file, so a restart keeps the data

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed; tests/run.sh installs it")
        self._directory.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "yes" if self.persist else "no", "--appendfsync", "always",
             "--dir", str(self._directory)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_until(self.ping, timeout=10)

    def ping(self) -> bool:
        with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None


class GatewayProcess:
    """`gateway serve` as a real process on a free port."""

    def __init__(self, config: Path, workers: int, env: dict[str, str], log: Path) -> None:
        self.workers = workers
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = log
        command = [sys.executable, "-m", "gateway", "serve", "--config", str(config),
                   "--port", str(self.port), "--workers", str(workers)]  # fmt: skip
        self._log_file = log.open("wb")
        self.process = subprocess.Popen(
            command,
            env={**os.environ, **env},
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self, timeout: float = 60.0) -> None:
        def ready() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"gateway exited early:\n{self.output()}")
            return httpx.get(f"{self.url}/v2/health/ready", timeout=2).status_code == 200

        wait_until(ready, timeout=timeout, interval=0.1)
        # One answer proves one worker; every worker logs its start-up when it is serving.
        started = "Application startup complete."
        wait_until(lambda: self.output().count(started) >= self.workers, timeout=timeout)

    def output(self) -> str:
        return self._log.read_text(errors="replace")

    def stop(self) -> None:
        """Stop at once: SIGINT skips SIGTERM's drain (README "Graceful shutdown")."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGINT)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self._log_file.close()


ADMIN = {"Authorization": "Bearer secret"}


def make_renamed_model(source: Path, path: Path, renames: dict[str, str]) -> None:
    """A copy of `source` whose graph outputs carry other names (a re-export, say)."""
    model = onnx.load(str(source))
    for node in model.graph.node:
        node.output[:] = [renames.get(name, name) for name in node.output]
    for output in model.graph.output:
        output.name = renames.get(output.name, output.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


def make_identity_model(path: Path) -> None:
    """Float tensors straight through: `x16`, `x32`, `x64` -> `y16`, `y32`, `y64` (any shape)."""
    types = {"16": TensorProto.FLOAT16, "32": TensorProto.FLOAT, "64": TensorProto.DOUBLE}
    graph = helper.make_graph(
        [helper.make_node("Identity", [f"x{bits}"], [f"y{bits}"]) for bits in types],
        "identity",
        [helper.make_tensor_value_info(f"x{bits}", kind, ["n"]) for bits, kind in types.items()],
        [helper.make_tensor_value_info(f"y{bits}", kind, ["n"]) for bits, kind in types.items()],
    )
    _save(graph, path)


@contextlib.contextmanager
def serving(config: dict[str, Any], tmp: Path) -> Iterator[GatewayProcess]:
    """A one-worker gateway for `config` (written under `tmp`), stopped on exit."""
    path = tmp / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    gateway = GatewayProcess(path, 1, {}, tmp / "gateway.log")
    try:
        gateway.wait_ready()
        yield gateway
    finally:
        gateway.stop()


def make_constant_classifier(path: Path, label: int) -> None:
    """An iris-shaped classifier that always answers `label` (a bad model, for feedback)."""
    one_hot = np.zeros(3, dtype=np.float32)
    one_hot[label] = 1.0
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["input", "zeros"], ["product"]),
            helper.make_node("Add", ["product", "one_hot"], ["probabilities"]),
            helper.make_node("ArgMax", ["probabilities"], ["label"], axis=1, keepdims=0),
        ],
        "constant",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["n", 4])],
        [
            helper.make_tensor_value_info("label", TensorProto.INT64, ["n"]),
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["n", 3]),
        ],
        [
            numpy_helper.from_array(np.zeros((4, 3), dtype=np.float32), name="zeros"),
            numpy_helper.from_array(one_hot, name="one_hot"),
        ],
    )
    _save(graph, path)


def make_iris_copy(
    path: Path, matmuls: int = 0, fail_above: float | None = None, rows: int = 32, width: int = 256
) -> None:
    """The bundled iris `blue` classifier, same answers, plus optional weight: `matmuls`
    products of a [rows, width] matrix whose result is added as zeros (each costs the same, so
    3 of them take about three times as long as 1), and a failure: any batch with a first
    feature (sepal length) above `fail_above` makes a Gather index out of range, which
    onnxruntime refuses at run time."""
    model = onnx.load(str(MODELS / "iris" / "1" / "model.onnx"))
    graph = model.graph
    for node in graph.node:
        node.output[:] = ["raw" if name == "probabilities" else name for name in node.output]
    extra = [helper.make_node("ReduceMax", ["input"], ["top"], keepdims=0)]  # a scalar
    constants = {
        "grid": np.array([rows, width], dtype=np.int64),
        "zero": np.float32(0.0),
        **({"eye": np.eye(width, dtype=np.float32)} if matmuls else {}),
    }
    extra.append(helper.make_node("Mul", ["top", "zero"], ["nothing"]))
    extra.append(helper.make_node("Expand", ["nothing", "grid"], ["h0"]))
    for i in range(matmuls):
        extra.append(helper.make_node("MatMul", [f"h{i}", "eye"], [f"h{i + 1}"]))
    extra.append(helper.make_node("ReduceSum", [f"h{matmuls}"], ["weight"], keepdims=0))
    total = "weight"
    if fail_above is not None:
        constants |= {
            "table": np.zeros(2, dtype=np.float32), "first": np.array([0], dtype=np.int64),
            "one": np.array([1], dtype=np.int64), "limit": np.float32(fail_above),
            "hundred": np.int64(100),
        }  # fmt: skip
        extra += [
            helper.make_node("Slice", ["input", "first", "one", "one"], ["sepal"]),
            helper.make_node("ReduceMax", ["sepal"], ["longest"], keepdims=0),
            helper.make_node("Greater", ["longest", "limit"], ["over"]),
            helper.make_node("Cast", ["over"], ["flag"], to=TensorProto.INT64),
            helper.make_node("Mul", ["flag", "hundred"], ["index"]),
            helper.make_node("Gather", ["table", "index"], ["gate"]),
            helper.make_node("Add", ["weight", "gate"], ["gated"]),
        ]
        total = "gated"
    extra.append(helper.make_node("Add", ["raw", total], ["probabilities"]))
    graph.node.extend(extra)
    graph.initializer.extend(numpy_helper.from_array(v, name=k) for k, v in constants.items())
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


class MlflowServer:
    """`mlflow server` on a free port, one worker and no job runner (the test needs neither),
    stopped by its process group's id."""

    def __init__(self, directory: Path) -> None:
        self.url = f"http://127.0.0.1:{free_port()}"
        self._directory = directory
        self._log = directory / "mlflow.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start it, unless it runs already."""
        if self.process is not None:
            return
        command = [
            sys.executable, "-m", "mlflow", "server", "--workers", "1",
            "--backend-store-uri", f"sqlite:///{self._directory / 'mlflow.db'}",
            "--default-artifact-root", str(self._directory / "artifacts"),
            "--host", "127.0.0.1", "--port", self.url.rsplit(":", 1)[1],
        ]  # fmt: skip
        with self._log.open("wb") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
            )  # fmt: skip

    def wait_ready(self) -> None:
        def health() -> bool:
            if self.process is not None and self.process.poll() is not None:
                raise AssertionError(f"mlflow server exited:\n{self._log.read_text()}")
            return httpx.get(f"{self.url}/health", timeout=2).status_code == 200

        wait_until(health, timeout=180, interval=0.2)

    def stop(self) -> None:
        """Stop at once, as a registry that goes down would (SIGKILL to its process group)."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=20)
        self.process = None


class EarlyMlflow:
    """The MLflow registry of tests/e2e/test_mlflow_source.py, started when collection ends
    (tests/conftest.py) if that module will run: its start-up, about 13 s of imports, then
    overlaps the tests before it. Removed at the end of the session."""

    def __init__(self) -> None:
        self._directory: Path | None = None
        self._server: MlflowServer | None = None

    def start(self) -> None:
        self._directory = Path(tempfile.mkdtemp(prefix="gateway-mlflow-"))
        self._server = MlflowServer(self._directory)
        self._server.start()

    def take(self) -> "MlflowServer | None":
        """The started server, handed over once (its taker stops it)."""
        server, self._server = self._server, None
        return server

    def remove(self) -> None:
        if self._server is not None:
            self._server.stop()
        if self._directory is not None:
            shutil.rmtree(self._directory, ignore_errors=True)


EARLY_MLFLOW = EarlyMlflow()


def chart_values() -> dict[str, Any]:
    """The Helm chart's values.yaml, as its defaults."""
    values: dict[str, Any] = yaml.safe_load((CHART / "values.yaml").read_text(encoding="utf-8"))
    return values


def chart_template(name: str) -> str:
    """The text of one of the chart's templates (no helm binary here to render it)."""
    return (CHART / "templates" / name).read_text(encoding="utf-8")
