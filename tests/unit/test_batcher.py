"""The per-variant queue: dynamic batching, admission control and deadlines, on real sessions."""

import asyncio
import json
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from prometheus_client import CollectorRegistry
from support import make_echo_model, make_slow_model

from gateway.errors import ConfigError, InferenceTimeout, ModelRefused, QueueFull
from gateway.metrics import Metrics
from gateway.runtime import ModelRepository, ModelSession, QueuePolicy, Runner, Scheduler
from gateway.runtime.batcher import VariantQueue
from gateway.shadow import ShadowJob, ShadowLog
from gateway.sinks import JsonLinesSink
from gateway.types import InferResult


class Recorder:
    """What a queue reports, kept for the assertions (the gateway's Metrics in production)."""

    def __init__(self) -> None:
        self.batches: list[int] = []
        self.waits: list[float] = []
        self.rejections: list[str] = []

    def observe_batch(self, model: str, variant: str, rows: int) -> None:
        self.batches.append(rows)

    def observe_queue(self, model: str, variant: str, seconds: float) -> None:
        self.waits.append(seconds)

    def rejected(self, model: str, variant: str, reason: str) -> None:
        self.rejections.append(reason)


def _save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def make_lookup_model(path: Path) -> Path:
    """x [batch, 1] float -> a table of 4 entries indexed by x: x outside 0..3 is refused."""
    table = numpy_helper.from_array(np.array([10, 11, 12, 13], np.int64), name="table")
    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["x"], ["index"], to=TensorProto.INT64),
            helper.make_node("Gather", ["table", "index"], ["value"]),
        ],
        "lookup",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1])],
        [helper.make_tensor_value_info("value", TensorProto.INT64, ["batch", 1])],
        [table],
    )
    return _save(graph, path)


def session_of(path: Path) -> ModelSession:
    session = ModelSession("m", "v", path)
    session.warm_up()
    return session


def queue_of(
    session: ModelSession, threads: int = 1, **policy: object
) -> tuple[VariantQueue, Recorder]:
    recorder = Recorder()
    return VariantQueue(session, QueuePolicy(**policy), Runner(threads), recorder), recorder  # type: ignore[arg-type]


def deadline(seconds: float = 10.0) -> float:
    return time.perf_counter() + seconds


async def test_batched_outputs_go_back_to_their_own_callers(tmp_path: Path) -> None:
    """64 concurrent requests of 1-3 rows each get exactly their own rows of every output."""
    queue, recorder = queue_of(
        session_of(make_echo_model(tmp_path / "echo.onnx")), max_batch_size=16
    )
    rng = np.random.default_rng(7)
    requests = [rng.normal(size=(int(rng.integers(1, 4)), 3)).astype(np.float32) for _ in range(64)]

    async def call(x: np.ndarray) -> dict[str, np.ndarray]:
        outputs, _ = await queue.run({"x": x}, ["double", "total", "run_rows"], len(x), deadline())
        return outputs

    answers = await asyncio.gather(*(call(x) for x in requests))
    for x, answer in zip(requests, answers, strict=True):
        assert np.array_equal(answer["double"], x * 2)
        assert np.allclose(answer["total"], x.sum(axis=1), rtol=1e-6)
        assert answer["run_rows"].shape == (len(x),)
    assert sum(recorder.batches) == sum(len(x) for x in requests)
    assert max(recorder.batches) > 3, "concurrent requests were never batched"
    assert max(recorder.batches) <= 16


async def test_different_shapes_and_outputs_are_never_batched_together(tmp_path: Path) -> None:
    """Requests differing in trailing shape or requested outputs run in separate batches."""
    queue, recorder = queue_of(
        session_of(make_echo_model(tmp_path / "echo.onnx")), max_batch_size=64
    )
    kinds = [(3, ("double", "total")), (5, ("double", "total")), (3, ("total",))]
    calls = []
    for i in range(30):
        width, names = kinds[i % 3]
        x = np.full((1, width), float(i), np.float32)
        calls.append((x, names, queue.run({"x": x}, list(names), 1, deadline())))
    answers = await asyncio.gather(*(call for _, _, call in calls))
    for (x, names, _), (outputs, _) in zip(calls, answers, strict=True):
        assert sorted(outputs) == sorted(names)
        assert np.allclose(outputs["total"], x.sum(axis=1))
        if "double" in outputs:
            assert outputs["double"].shape == x.shape
    # The first request runs alone; the 29 queued behind it form one batch per kind.
    assert recorder.batches[0] == 1 and sorted(recorder.batches[1:]) == [9, 10, 10]


async def test_request_larger_than_max_batch_size_runs_alone(tmp_path: Path) -> None:
    """A request with more rows than max_batch_size is answered whole, in a run of its own."""
    queue, recorder = queue_of(
        session_of(make_echo_model(tmp_path / "echo.onnx")), max_batch_size=4
    )
    big = np.arange(30, dtype=np.float32).reshape(10, 3)
    small = np.ones((1, 3), np.float32)
    results = await asyncio.gather(
        queue.run({"x": small}, ["double"], 1, deadline()),
        queue.run({"x": big}, ["double"], 10, deadline()),
        queue.run({"x": small}, ["double"], 1, deadline()),
    )
    assert np.array_equal(results[1][0]["double"], big * 2)
    assert 10 in recorder.batches and max(recorder.batches) == 10


async def test_a_refused_request_fails_alone_not_its_batch(tmp_path: Path) -> None:
    """When the model refuses one request of a batch, only that request fails, with a 400."""
    queue, _ = queue_of(session_of(make_lookup_model(tmp_path / "lookup.onnx")), max_batch_size=32)
    values = [0.0, 1.0, 9.0, 2.0, 3.0, -5.0, 1.0]

    async def call(value: float) -> np.ndarray:
        outputs, _ = await queue.run(
            {"x": np.array([[value]], np.float32)}, ["value"], 1, deadline()
        )
        return outputs["value"]

    results = await asyncio.gather(*(call(v) for v in values), return_exceptions=True)
    for value, result in zip(values, results, strict=True):
        if 0 <= value <= 3:
            assert isinstance(result, np.ndarray) and result.tolist() == [[10 + int(value)]]
        else:
            assert isinstance(result, ModelRefused) and result.status_code == 400


async def test_a_lone_caller_never_waits_for_a_batch(tmp_path: Path) -> None:
    """With a 2 s max_queue_delay, requests sent one after another never wait in the queue."""
    queue, recorder = queue_of(
        session_of(make_echo_model(tmp_path / "echo.onnx")),
        max_batch_size=32,
        max_queue_delay_s=2.0,
    )
    for _ in range(20):
        await queue.run({"x": np.ones((1, 3), np.float32)}, ["total"], 1, deadline())
    assert recorder.batches == [1] * 20
    assert max(recorder.waits) < 0.5  # far below the delay: nobody waited for it


async def test_callers_about_wait_for_a_fuller_batch(tmp_path: Path) -> None:
    """After a batch of 8, a request waits (up to the delay) for others to join it."""
    queue, recorder = queue_of(
        session_of(make_echo_model(tmp_path / "echo.onnx")), max_batch_size=8, max_queue_delay_s=2.0
    )
    x = np.ones((1, 3), np.float32)
    await asyncio.gather(*(queue.run({"x": x}, ["total"], 1, deadline()) for _ in range(9)))
    assert recorder.batches == [1, 8]
    first = asyncio.ensure_future(queue.run({"x": x}, ["total"], 1, deadline()))
    await asyncio.sleep(0.05)  # the batch-mates arrive later than the first request
    assert not first.done(), "the request ran alone although callers were about"
    await asyncio.gather(first, *(queue.run({"x": x}, ["total"], 1, deadline()) for _ in range(7)))
    assert recorder.batches == [1, 8, 8]


async def test_full_queue_answers_429_at_once_with_retry_after(tmp_path: Path) -> None:
    """Beyond max_queue_size waiting requests, a request is refused at once; the rest are served."""
    make_slow_model(tmp_path / "slow.onnx", layers=2)
    queue, recorder = queue_of(session_of(tmp_path / "slow.onnx"), max_queue_size=2)
    x = {"input": np.zeros((1, 4), np.float32)}
    admitted = [asyncio.ensure_future(queue.run(x, ["scores"], 1, deadline(60))) for _ in range(3)]
    await asyncio.sleep(0)  # one runs, two wait
    with pytest.raises(QueueFull) as refused:
        await queue.run(x, ["scores"], 1, deadline(60))
    assert refused.value.status_code == 429
    assert dict(refused.value.headers)["retry-after"].isdigit()
    assert int(dict(refused.value.headers)["retry-after"]) >= 1
    assert recorder.rejections == ["queue_full"]
    assert all(not call.done() for call in admitted)  # refused without waiting for any of them
    for outputs, _ in await asyncio.gather(*admitted):
        assert outputs["scores"].shape == ()


async def test_a_request_that_cannot_finish_in_time_is_refused_at_once(tmp_path: Path) -> None:
    """With more work ahead than its deadline allows, a request gets 504 before anything runs."""
    make_slow_model(tmp_path / "slow.onnx", layers=2)
    session = session_of(tmp_path / "slow.onnx")
    queue, recorder = queue_of(session)
    x = {"input": np.zeros((1, 4), np.float32)}
    ahead = [asyncio.ensure_future(queue.run(x, ["scores"], 1, deadline(60))) for _ in range(4)]
    await asyncio.sleep(0)
    with pytest.raises(InferenceTimeout, match="requests ahead of this one"):
        await queue.run(x, ["scores"], 1, deadline(3 * session.seconds_per_row))
    assert recorder.rejections == ["deadline"] and not any(call.done() for call in ahead)
    await asyncio.gather(*ahead)


async def test_a_request_still_queued_at_its_deadline_is_answered_then(tmp_path: Path) -> None:
    """A queued request whose deadline passes gets 504 at once and leaves the queue."""
    make_slow_model(tmp_path / "slow.onnx", layers=2)
    session = session_of(tmp_path / "slow.onnx")
    queue, recorder = queue_of(session)
    queue._cost.per_row = 0.0  # as if the model were fast: admission lets everything in
    x = {"input": np.zeros((1, 4), np.float32)}
    running = asyncio.ensure_future(queue.run(x, ["scores"], 1, deadline(60)))
    await asyncio.sleep(0)
    started = time.perf_counter()
    with pytest.raises(InferenceTimeout, match="waited in the queue until its deadline"):
        await queue.run(x, ["scores"], 1, deadline(session.seconds_per_row / 4))
    assert time.perf_counter() - started < session.seconds_per_row
    assert recorder.rejections == ["deadline"] and not running.done()
    await running
    assert len(recorder.batches) == 1  # the expired request never ran


async def test_scheduler_keeps_tiny_unbatched_runs_inline(tmp_path: Path) -> None:
    """Without batching a tiny run stays inline (no queue); with batching it goes to the queue."""
    echo = session_of(make_echo_model(tmp_path / "echo.onnx"))
    recorder = Recorder()
    scheduler = Scheduler(
        Runner(1, inline_below_s=1.0), {("m", "batched"): QueuePolicy(8)}, recorder
    )
    x = {"x": np.ones((1, 3), np.float32)}
    await scheduler.run(echo, x, ["total"], 1, deadline())
    assert recorder.batches == []
    batched = ModelSession("m", "batched", tmp_path / "echo.onnx", same_file=echo)
    batched.warm_up()
    await scheduler.run(batched, x, ["total"], 1, deadline())
    assert recorder.batches == [1]


def test_batching_needs_a_batch_dimension(tmp_path: Path) -> None:
    """A variant whose inputs or outputs lack a leading batch dimension cannot be batched."""
    make_slow_model(tmp_path / "slow.onnx", layers=1)
    with pytest.raises(ConfigError, match="output 'scores' does not keep the batch dimension"):
        ModelSession("m", "slow", tmp_path / "slow.onnx").check_batching(8)
    fixed = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "fixed",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
    )
    with pytest.raises(ConfigError, match="needs a dynamic first \\(batch\\) dimension"):
        ModelSession("m", "fixed", _save(fixed, tmp_path / "fixed.onnx")).check_batching(8)
    ModelSession("m", "echo", make_echo_model(tmp_path / "echo.onnx")).check_batching(8)


async def test_shadow_runs_join_batches_and_keep_their_own_answers(tmp_path: Path) -> None:
    """Queued shadow jobs of a batching variant run together; each record holds its own rows."""
    echo = session_of(make_echo_model(tmp_path / "echo.onnx"))
    repository = ModelRepository({"m": {"v": echo}})
    sink = JsonLinesSink(tmp_path / "shadow")
    log = ShadowLog(
        repository, sink, Metrics(CollectorRegistry()), log_inputs={"m": True},
        queue_size=100, concurrency=1, max_batch_size={("m", "v"): 16},
    )  # fmt: skip
    inputs = [np.full((1, 3), float(i), np.float32) for i in range(30)]
    for i, x in enumerate(inputs):  # queued before the thread starts: it finds them all waiting
        outputs = echo.run({"x": x}, echo.output_names)
        live = InferResult("m", "v", "live", 1, outputs, echo.output_specs)
        log.submit(ShadowJob("m", "v", f"r{i}", {"x": x}, live, 0.001))
    log.start()
    await log.close()
    lines = (tmp_path / "shadow" / "m.jsonl").read_text().splitlines()
    records = {r["request_id"]: r for r in map(json.loads, lines)}
    assert len(records) == 30
    for i, x in enumerate(inputs):
        shadow = json.loads(records[f"r{i}"]["shadow_output"])
        assert shadow["double"] == (x * 2).tolist()
    run_rows = sorted(json.loads(r["shadow_output"])["run_rows"][0] for r in records.values())
    assert run_rows == [14] * 14 + [16] * 16


async def test_places_held_while_bodies_are_read_count_against_the_queue(tmp_path: Path) -> None:
    """Admitted heads hold places: with one slot and a queue of 2, three holds fill it (one
    will run at once), a fourth is refused with nothing queued yet; a released place is free."""
    make_slow_model(tmp_path / "slow.onnx", layers=1)
    queue, recorder = queue_of(session_of(tmp_path / "slow.onnx"), max_queue_size=2)
    now = time.perf_counter()
    held = [queue.hold() for _ in range(3)]
    for place in held:
        assert place is not None
    with pytest.raises(QueueFull):
        queue.admit(1, now, deadline())
    held[0].release()
    held[0].release()  # twice: given back once
    queue.admit(1, now, deadline())
    assert recorder.rejections == ["queue_full"]


async def test_a_late_answer_limits_how_many_are_admitted(tmp_path: Path) -> None:
    """Once an answer comes after half its time to its deadline, the queue admits a fifth
    fewer requests than were outstanding, and refuses the rest at once with 504."""
    make_slow_model(tmp_path / "slow.onnx", layers=2)
    session = session_of(tmp_path / "slow.onnx")
    queue, recorder = queue_of(session)
    queue._cost.per_row = 0.0  # as if the model were fast: only lateness limits
    x = {"input": np.zeros((1, 4), np.float32)}
    budget = session.seconds_per_row * 1.5  # the second of these is answered late, in time
    calls = [
        asyncio.ensure_future(queue.run(x, ["scores"], 1, deadline(budget * 4))) for _ in range(5)
    ]
    await asyncio.gather(*calls)
    assert queue._limit.limit < 5
    with pytest.raises(InferenceTimeout, match="would not be answered before its deadline"):
        for _ in range(5):
            queue.admit(1, time.perf_counter(), deadline(60))
            queue.hold()
    assert recorder.rejections == ["deadline"]
