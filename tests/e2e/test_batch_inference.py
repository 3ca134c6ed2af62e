"""`gateway batch` as a real process: Parquet, CSV and JSON lines of iris rows, routed and direct,
bad inputs refused before anything is written, a job killed half-way and resumed, and the Ray
engine (README "Batch inference")."""

import contextlib
import http.server
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import yaml
from sklearn.datasets import load_iris
from support import MODELS, make_slow_batchable_model, wait_until

from gateway.cli import main

pytestmark = pytest.mark.e2e

ROWS = 30
FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A config (iris: live blue, 50% canary green sticky by `user`, 100% shadow mlp; a slow
    model) and ROWS iris rows as Parquet, CSV and JSON lines: an id, a user and four features."""
    folder = tmp_path_factory.mktemp("batch")
    data = load_iris().data[:: 150 // ROWS][:ROWS]
    features = dict(zip(FEATURES, data.T, strict=True))
    users = [f"user-{i % 10}" for i in range(ROWS)]
    table = pa.table({"id": [f"row-{i}" for i in range(ROWS)], "user": users, **features})
    pq.write_table(table, folder / "iris.parquet", row_group_size=7)
    pacsv.write_csv(table, folder / "iris.csv")
    (folder / "iris.jsonl").write_text("".join(json.dumps(r) + "\n" for r in table.to_pylist()))
    shutil.copytree(MODELS / "iris", folder / "models" / "iris")
    make_slow_batchable_model(folder / "models" / "slow" / "model.onnx", layers=1)
    config = {
        "model_repository": str(folder / "models"),
        "data_dir": str(folder / "data"),
        "models": {
            "iris": {
                "variants": {
                    v: {"path": f"iris/{n}/model.onnx"}
                    for n, v in ((1, "blue"), (2, "green"), (3, "mlp"))
                },
                "routing": {
                    "live": "blue",
                    "canary": {"variant": "green", "weight": 0.5},
                    "sticky_header": "user",
                    "shadows": [{"variant": "mlp", "sample": 1.0}],
                },
            },
            "slow": {"variants": {"v1": {"path": "slow/model.onnx"}}, "routing": {"live": "v1"}},
        },
    }
    (folder / "gateway.yaml").write_text(yaml.safe_dump(config))
    return {"folder": folder, "config": folder / "gateway.yaml"}


@pytest.fixture(scope="module")
def ray_job(files: dict[str, Path]) -> Iterator[subprocess.Popen[bytes]]:
    """`gateway batch --engine ray` started when first asked for and left to run beside the
    other tests (a local Ray takes seconds to start); `test_ray_engine` waits for it."""
    folder = files["folder"]
    command = [sys.executable, "-m", "gateway", "batch", "iris", "--config", str(files["config"]), "--input", str(folder / "iris.parquet"), "--output", str(folder / "ray.parquet"), "--variant", "green", "--chunk-rows", "8", "--engine", "ray", "--workers", "1"]  # fmt: skip
    # Ray's workers import what the driver compiled where bytecode is written (tests/run.sh):
    # 17 s instead of 28 s.
    with (folder / "ray.log").open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    yield process
    if process.poll() is None:
        process.kill()
        process.wait()


def batch(config: Path, *args: str) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "gateway", "batch", *args, "--config", str(config)]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen[str]) -> tuple[int, str]:
    _, stderr = process.communicate(timeout=60)
    return process.returncode, stderr


def read_output(path: Path) -> list[dict[str, Any]]:
    if path.suffix == ".parquet":
        return list(pq.read_table(path).to_pylist())
    if path.suffix == ".csv":
        return list(pacsv.read_csv(path).to_pylist())
    return [json.loads(line) for line in path.read_text().splitlines()]


def onnx_answers(variant: int, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    session = ort.InferenceSession(str(MODELS / "iris" / str(variant) / "model.onnx"))
    label, probabilities = session.run(None, {"input": rows.astype(np.float32)})
    return label, probabilities


def iris_rows(folder: Path) -> np.ndarray:
    table = pq.read_table(folder / "iris.parquet")
    return np.column_stack([table.column(name).to_numpy() for name in FEATURES])


def test_three_formats_routed_and_direct(
    files: dict[str, Path], ray_job: subprocess.Popen[bytes]
) -> None:
    """Parquet routed through a 50% canary sticky by the user column (every row as its variant
    answers it, each row shadowed under its id); CSV and JSON lines straight to green: every
    prediction equals onnxruntime's. (Asks for `ray_job` only to start it early.)"""
    folder = files["folder"]
    runs = {
        "parquet": batch(files["config"], "iris", "--input", str(folder / "iris.parquet"), "--output", str(folder / "out.parquet"), "--chunk-rows", "8", "--batch-rows", "3"),
        "csv": batch(files["config"], "iris", "--input", str(folder / "iris.csv"), "--output", str(folder / "out.csv"), "--variant", "green", "--chunk-rows", "8"),
        "jsonl": batch(files["config"], "iris", "--input", str(folder / "iris.jsonl"), "--output", str(folder / "out.jsonl"), "--variant", "green"),
    }  # fmt: skip
    for name, process in runs.items():
        code, stderr = finish(process)
        assert code == 0, (name, stderr)
        assert f"{ROWS} rows of iris written" in stderr
    rows = iris_rows(folder)
    expected = {"blue": onnx_answers(1, rows), "green": onnx_answers(2, rows)}
    routed = read_output(folder / "out.parquet")
    assert {row["variant"] for row in routed} == {"blue", "green"}
    variant_of = {f"user-{i % 10}": row["variant"] for i, row in enumerate(routed)}
    assert all(row["variant"] == variant_of[f"user-{i % 10}"] for i, row in enumerate(routed))
    for name in ("parquet", "csv", "jsonl"):
        answers = read_output(folder / f"out.{name}")
        assert [row["id"] for row in answers] == [f"row-{i}" for i in range(ROWS)]
        for i, row in enumerate(answers):
            label, probabilities = expected[row["variant"]]
            found = (
                row["probabilities"]
                if name != "csv"
                else [row[f"probabilities[{k}]"] for k in range(3)]
            )
            assert row["label"] == label[i]
            np.testing.assert_allclose(found, probabilities[i], rtol=1e-5)  # CSV: 7 digits
        assert name == "parquet" or {row["variant"] for row in answers} == {"green"}
    shadowed = (folder / "data" / "shadow" / "iris.jsonl").read_text().splitlines()
    assert sorted(json.loads(line)["request_id"] for line in shadowed) == sorted(
        f"row-{i}" for i in range(ROWS)
    )
    assert not (folder / "out.parquet.parts").exists()


def test_bad_inputs_write_nothing(
    files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """A missing column, a text column among the features, too few features, an unknown model or
    variant: exit 2 with a message naming it, and no output or checkpoint (the command's own
    `main`, in this process: each is refused before anything runs)."""
    folder = files["folder"]
    text = pa.table(
        {"id": [1, 2], "a": [1.0, 2.0], "b": [1.0, 2.0], "species": ["x", "y"], "d": [1.0, 2.0]}
    )
    pacsv.write_csv(text, folder / "text.csv")
    source = ["--input", str(folder / "iris.parquet")]
    cases = {
        "column 'petal_area' is not in the input file": ["iris", *source, "--columns", "sepal_length,petal_area"],
        "column 'species' has type string, which cannot feed input 'input' (FP32)": ["iris", "--input", str(folder / "text.csv")],
        "input 'input' takes 4 features per row (shape [-1, 4]); the feature columns are 2": ["iris", *source, "--columns", "sepal_length,sepal_width"],
        "unknown model 'roses'": ["roses", *source],
        "model 'iris' has no variant 'purple'": ["iris", *source, "--variant", "purple"],
        "the format is read from the extension": ["iris", *source],
    }  # fmt: skip
    for message, args in cases.items():
        output = folder / ("bad.xlsx" if "extension" in message else "bad.parquet")
        assert (
            main(["batch", *args, "--output", str(output), "--config", str(files["config"])]) == 2
        )
        stderr = capsys.readouterr().err
        assert message in stderr and "Traceback" not in stderr
        assert not output.exists() and not output.with_name(output.name + ".parts").exists()


def test_killed_half_way_and_resumed(
    files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """SIGKILL once some chunks are checkpointed; the same command again predicts the rest
    (another chunk size is refused, naming it), and the output has every id exactly once."""
    folder = files["folder"]
    rows = 60
    pq.write_table(
        pa.table({"id": np.arange(rows) * 10, **{f: np.full(rows, 1.5) for f in FEATURES}}),
        folder / "many.parquet",
    )
    output = folder / "many.jsonl"
    args = [
        "slow",
        "--input",
        str(folder / "many.parquet"),
        "--output",
        str(output),
        "--chunk-rows",
        "10",
    ]
    first = batch(files["config"], *args)
    manifest = folder / "many.jsonl.parts" / "manifest.json"

    def some_done() -> int:
        done = json.loads(manifest.read_text())["done"] if manifest.exists() else {}
        return len(done) if len(done) >= 2 else 0

    wait_until(some_done, timeout=30, interval=0.01)
    os.kill(first.pid, signal.SIGKILL)
    first.communicate(timeout=10)
    done = json.loads(manifest.read_text())["done"]
    assert 2 <= len(done) < rows // 10 and not output.exists()
    config = ["--config", str(files["config"])]
    assert main(["batch", *args[:-1], "7", *config]) == 2  # in this process, as below
    assert "another chunk_rows" in capsys.readouterr().err
    with pushgateway() as (url, pushed):
        assert main(["batch", *args, *config, "--pushgateway", url]) == 0
    assert f"{len(done)} chunks ({10 * len(done)} rows) already done" in capsys.readouterr().err
    (path, body), *_ = pushed
    assert path.startswith("/metrics/job/gateway_batch/instance/") and path.endswith("/model/slow")
    predicted = rows - 10 * len(done)
    assert (
        f'gateway_requests_total{{code="200",model="slow",role="live",variant="v1"}} {predicted}.0'
        in body
    )
    answers = read_output(output)
    assert [row["id"] for row in answers] == list(range(0, rows * 10, 10))
    assert all(row["scores"] == [3.0] * 4 for row in answers)
    assert not manifest.parent.exists()


@contextlib.contextmanager
def pushgateway() -> Iterator[tuple[str, list[tuple[str, str]]]]:
    """A stand-in Prometheus Pushgateway on a free port: the (path, body) of each PUT."""
    pushed: list[tuple[str, str]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_PUT(self) -> None:
            body = self.rfile.read(int(self.headers["content-length"]))
            pushed.append((self.path, body.decode()))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", pushed
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_ray_engine(files: dict[str, Path], ray_job: subprocess.Popen[bytes]) -> None:
    """--engine ray (a local Ray, one actor): the chunks as a Ray Data map_batches job give
    every row once, as onnxruntime answers it."""
    assert ray_job.wait(timeout=120) == 0, (files["folder"] / "ray.log").read_text()[-3000:]
    answers = read_output(files["folder"] / "ray.parquet")
    assert [row["id"] for row in answers] == [f"row-{i}" for i in range(ROWS)]
    label, probabilities = onnx_answers(2, iris_rows(files["folder"]))
    assert [row["label"] for row in answers] == label.tolist()
    np.testing.assert_allclose([row["probabilities"] for row in answers], probabilities, rtol=1e-6)
    assert {row["variant"] for row in answers} == {"green"}
