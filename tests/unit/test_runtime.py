"""Model sessions and the repository: loading, refusing bad models, validating inputs, running."""

import asyncio
import threading
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from prometheus_client import CollectorRegistry
from support import MODELS, make_slow_model

from gateway.errors import BadRequest, ConfigError, InferenceTimeout, NotFound
from gateway.metrics import Metrics
from gateway.runtime import ModelSession, Runner, Scheduler, load_repository
from gateway.settings import Settings

IRIS = MODELS / "iris" / "1" / "model.onnx"


def settings_for(repo: Path, variants: dict[str, str], live: str = "a") -> Settings:
    return Settings.model_validate(
        {
            "model_repository": repo,
            "models": {
                "m": {
                    "variants": {k: {"path": v} for k, v in variants.items()},
                    "routing": {"live": live},
                }
            },
        }
    )


def test_session_reads_specs_from_the_model() -> None:
    """Inputs and outputs come from the ONNX metadata, -1 for dynamic dimensions."""
    session = ModelSession("iris", "blue", IRIS)
    assert [s.as_metadata() for s in session.inputs] == [
        {"name": "input", "datatype": "FP32", "shape": [-1, 4]}
    ]
    assert [s.name for s in session.outputs] == ["label", "probabilities"]


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({"x": np.zeros((1, 4), np.float32)}, "unknown input 'x'"),
        ({}, "missing input 'input'"),
        ({"input": np.zeros((1, 4), np.float64)}, "datatype FP64, the model expects FP32"),
        ({"input": np.zeros((1, 5), np.float32)}, r"shape \[1, 5\]"),
        ({"input": np.zeros((4,), np.float32)}, r"shape \[4\]"),
    ],
)
def test_validation_refuses_what_the_model_cannot_take(
    inputs: dict[str, np.ndarray], message: str
) -> None:
    """Wrong names, datatypes, ranks and fixed dimensions are BadRequest before any run."""
    with pytest.raises(BadRequest, match=message):
        ModelSession("iris", "blue", IRIS).validate(inputs)


def test_model_with_non_tensor_outputs_is_refused(tmp_path: Path) -> None:
    """A model whose output is a sequence (e.g. ZipMap-style) is refused at load."""
    graph = helper.make_graph(
        [helper.make_node("SequenceConstruct", ["x"], ["seq"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_sequence_value_info("seq", TensorProto.FLOAT, [1])],
    )  # fmt: skip
    path = tmp_path / "seq.onnx"
    onnx.save(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8),
        str(path),
    )
    with pytest.raises(ConfigError, match="output 'seq' has type seq"):
        ModelSession("m", "v", path)


def test_broken_file_is_refused(tmp_path: Path) -> None:
    """A file that is not ONNX fails to load with the model, variant and path named."""
    (tmp_path / "bad.onnx").write_bytes(b"not onnx")
    with pytest.raises(ConfigError, match=r"model 'm', variant 'a'.*failed to load"):
        load_repository(settings_for(tmp_path, {"a": "bad.onnx"}))


def test_missing_file_and_escaping_path_are_refused(tmp_path: Path) -> None:
    """A missing file and a path outside the repository are start-up errors."""
    with pytest.raises(ConfigError, match="variant 'a': no ONNX file"):
        load_repository(settings_for(tmp_path, {"a": "absent.onnx"}))
    with pytest.raises(ConfigError, match="escapes the model repository"):
        load_repository(settings_for(MODELS / "mlp", {"a": "../iris/1/model.onnx"}))


def test_variant_with_other_inputs_is_refused() -> None:
    """A variant whose inputs differ from the live variant's cannot be served beside it."""
    with pytest.raises(ConfigError, match=r"variant 'b': inputs .* differ from live variant 'a'"):
        load_repository(settings_for(MODELS, {"a": "iris/1/model.onnx", "b": "mlp/1/model.onnx"}))


def test_repository_lookups() -> None:
    """Unknown models and variants are NotFound, naming what exists."""
    repo = load_repository(settings_for(MODELS, {"a": "iris/1/model.onnx"}))
    assert repo.session("m", "a").variant == "a"
    with pytest.raises(NotFound, match="unknown model 'x'"):
        repo.variants("x")
    with pytest.raises(NotFound, match="no variant 'z'; its variants are \\['a'\\]"):
        repo.session("m", "z")


def test_reload_reuses_unchanged_sessions() -> None:
    """Loading again with the previous repository keeps sessions of unchanged files."""
    settings = settings_for(MODELS, {"a": "iris/1/model.onnx"})
    first = load_repository(settings)
    assert load_repository(settings, first).session("m", "a") is first.session("m", "a")


async def test_runner_answers_and_times_out(tmp_path: Path) -> None:
    """The runner returns outputs, and a run over the timeout raises InferenceTimeout."""
    runner = Runner(2)
    iris = ModelSession("iris", "blue", IRIS)
    row = {"input": np.array([[5.1, 3.5, 1.4, 0.2]], np.float32)}
    out, seconds = await runner.run_threaded(iris, row, ["label"], 5.0, 1)
    assert out["label"].tolist() == [0] and 0 < seconds < 5
    make_slow_model(tmp_path / "slow.onnx")
    slow = ModelSession("m", "slow", tmp_path / "slow.onnx")
    with pytest.raises(InferenceTimeout, match="did not end within the request timeout"):
        await runner.run_threaded(
            slow, {"input": np.zeros((1, 4), np.float32)}, ["scores"], 0.02, 1
        )
    # The terminated run frees its thread: a normal run still completes promptly afterwards.
    out, _ = await asyncio.wait_for(runner.run_threaded(iris, row, ["label"], 5.0, 1), 5)
    assert out["label"].tolist() == [0]
    runner.close()


async def test_cheap_runs_stay_inline_and_slow_ones_go_to_threads(tmp_path: Path) -> None:
    """Only variants whose measured cost is under the threshold run on the event loop thread."""
    runner = Runner(2, inline_below_s=0.0005)
    scheduler = Scheduler(runner, {}, Metrics(CollectorRegistry()))
    deadline = time.perf_counter() + 5.0
    iris = ModelSession("iris", "blue", IRIS)
    iris.warm_up()
    make_slow_model(tmp_path / "slow.onnx")
    slow = ModelSession("m", "slow", tmp_path / "slow.onnx")
    slow.warm_up()
    assert iris.expected_seconds(1) < 0.0005 < slow.expected_seconds(1)
    assert iris.expected_seconds(10_000) > 0.0005  # big batches of a cheap model go to threads
    threads: list[str] = []
    original = ModelSession.run

    def spy(self: ModelSession, *args: object) -> object:
        threads.append(threading.current_thread().name)
        return original(self, *args)

    ModelSession.run = spy  # type: ignore[method-assign]
    try:
        await scheduler.run(iris, {"input": np.zeros((1, 4), np.float32)}, ["label"], 1, deadline)
        await scheduler.run(slow, {"input": np.zeros((1, 4), np.float32)}, ["scores"], 1, deadline)
    finally:
        ModelSession.run = original  # type: ignore[method-assign]
    assert threads[0] == threading.current_thread().name
    assert threads[1].startswith("gateway-infer")
    runner.close()


def test_warm_up_runs_a_cheap_model_three_times_and_a_slow_one_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A model slower than the warm-up budget is warm after one run: start-up and reloads do
    not pay three of its runs."""
    runs: list[str] = []
    original = ModelSession.run

    def counted(self: ModelSession, *args: object) -> object:
        runs.append(self.variant)
        return original(self, *args)

    monkeypatch.setattr(ModelSession, "run", counted)
    make_slow_model(tmp_path / "slow.onnx")
    ModelSession("iris", "blue", IRIS).warm_up()
    ModelSession("m", "slow", tmp_path / "slow.onnx").warm_up()
    assert runs == ["blue"] * 3 + ["slow"]
