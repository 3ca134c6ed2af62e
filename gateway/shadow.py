"""Shadow mirroring: run sampled copies of live traffic off the request path and log the answers.

CONTRACT §3 and §5. Two bounded places hold work: the job queue (shadow runs waiting) and the
record buffer (results waiting to be written). When either is full the newest item is dropped and
counted; nothing here ever blocks or fails a caller. A writer task flushes the buffer in batches
to a `ShadowSink` (a Redis stream per model, or a JSON-lines file per model in embedded mode). A
failed write keeps the batch for the next try, so an outage loses only what the buffer cannot hold.
"""

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import orjson

from gateway.errors import GatewayError
from gateway.metrics import Metrics
from gateway.runtime import ModelRepository, Runner
from gateway.types import InferResult

log = logging.getLogger(__name__)

Record = dict[str, str]
FLUSH_INTERVAL_S = 0.1
RETRY_INTERVAL_S = 1.0
BATCH_SIZE = 500


class ShadowSink(Protocol):
    """Where shadow records go; `write` raises on failure and the batch is retried."""

    async def write(self, records: list[tuple[str, Record]]) -> None: ...

    async def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class ShadowJob:
    """One shadow run to do: the request's inputs and the live answer to compare with."""

    model: str
    variant: str
    request_id: str
    inputs: dict[str, np.ndarray]
    live: InferResult
    live_seconds: float


def agree(live: Mapping[str, np.ndarray], shadow: Mapping[str, np.ndarray]) -> bool:
    """Same label for classifiers, same argmax for 2-D float scores, allclose otherwise."""
    names = [name for name in live if name in shadow]
    if not names:
        return False
    labels = [name for name in names if live[name].dtype.kind in "iub"]
    if labels:
        return all(np.array_equal(live[name], shadow[name]) for name in labels)
    a, b = live[names[0]], shadow[names[0]]
    if a.ndim == 2 and a.shape == b.shape:
        return bool((a.argmax(axis=1) == b.argmax(axis=1)).all())
    return all(_close(live[name], shadow[name]) for name in names)


def _close(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and bool(np.allclose(a, b, rtol=1e-4, atol=1e-5))


def _json(tensors: Mapping[str, np.ndarray]) -> str:
    try:  # straight from the arrays' memory, several times faster than building Python lists
        return orjson.dumps(tensors, option=orjson.OPT_SERIALIZE_NUMPY).decode()
    except orjson.JSONEncodeError:  # 0-d or non-contiguous arrays, which orjson refuses
        return orjson.dumps({name: array.tolist() for name, array in tensors.items()}).decode()


class ShadowLog:
    """Runs shadow jobs with bounded concurrency and writes their records in batches."""

    def __init__(
        self,
        repository: ModelRepository,
        sink: ShadowSink,
        metrics: Metrics,
        *,
        log_inputs: Mapping[str, bool],
        queue_size: int,
        concurrency: int,
        timeout: float,
        inline_below_s: float = 0.0,
    ) -> None:
        self.repository = repository
        self.log_inputs = dict(log_inputs)
        self._sink = sink
        self._metrics = metrics
        self._timeout = timeout
        self._concurrency = concurrency
        # Tiny runs stay on the event loop, as the caller's do: a thread hand-off costs more.
        self._runner = Runner(concurrency, inline_below_s)
        self._jobs: asyncio.Queue[ShadowJob] = asyncio.Queue(queue_size)
        self._buffer: list[tuple[str, Record]] = []
        self._buffer_size = queue_size
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        """Start the shadow workers and the writer (inside the running event loop)."""
        self._tasks = [asyncio.create_task(self._work()) for _ in range(self._concurrency)]
        self._tasks.append(asyncio.create_task(self._write_forever()))

    def submit(self, job: ShadowJob) -> None:
        """Queue a shadow run, or drop and count it when the queue is full. Never blocks."""
        try:
            self._jobs.put_nowait(job)
        except asyncio.QueueFull:
            self._metrics.shadow_record(job.model, job.variant, "dropped")

    async def close(self, timeout: float = 5.0) -> None:
        """Finish queued jobs and write what is buffered, waiting at most `timeout` seconds."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._jobs.join()
                await self._flush()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        # What could not be run or written in time is lost: count it, as every loss is.
        while not self._jobs.empty():
            job = self._jobs.get_nowait()
            self._metrics.shadow_record(job.model, job.variant, "dropped")
        for model, record in self._buffer:
            self._metrics.shadow_record(model, record["shadow_variant"], "dropped")
        self._runner.close()
        await self._sink.close()

    async def _work(self) -> None:
        while True:
            job = await self._jobs.get()
            try:
                self._keep(job.model, job.variant, await self._run(job))
            except Exception:  # a broken shadow must never stop the worker
                log.exception("shadow run of %s/%s failed", job.model, job.variant)
                self._metrics.shadow_record(job.model, job.variant, "error")
            finally:
                self._jobs.task_done()

    async def _run(self, job: ShadowJob) -> Record:
        session = self.repository.session(job.model, job.variant)
        # Compare like with like; a shadow with none of live's outputs is logged whole.
        names = [name for name in job.live.outputs if name in session.output_specs]
        names = names or session.output_names
        started = time.perf_counter()
        error = None
        try:
            outputs, _ = await self._runner.run(session, job.inputs, names, self._timeout)
        except GatewayError as exc:
            outputs, error = {}, exc.message
        return self._record(job, outputs, time.perf_counter() - started, error)

    def _record(
        self, job: ShadowJob, outputs: dict[str, np.ndarray], seconds: float, error: str | None
    ) -> Record:
        agrees = error is None and agree(job.live.outputs, outputs)
        if error is None:
            self._metrics.shadow_comparison(job.model, job.variant, agrees)
        record = {
            "ts": str(int(time.time() * 1000)),
            "request_id": job.request_id,
            "model": job.model,
            "live_variant": job.live.variant,
            "shadow_variant": job.variant,
            "revision": str(job.live.revision),
            "live_output": _json(job.live.outputs),
            "shadow_output": _json(outputs)
            if error is None
            else orjson.dumps({"error": error}).decode(),
            "live_ms": f"{job.live_seconds * 1000:.3f}",
            "shadow_ms": f"{seconds * 1000:.3f}",
            "agree": "1" if agrees else "0",
        }
        if self.log_inputs.get(job.model, True):
            record["inputs"] = _json(job.inputs)
        if error is not None:
            record["error"] = error
        return record

    def _keep(self, model: str, variant: str, record: Record) -> None:
        if "error" in record:
            self._metrics.shadow_record(model, variant, "error")
        if len(self._buffer) >= self._buffer_size:
            self._metrics.shadow_record(model, variant, "dropped")
            return
        self._buffer.append((model, record))

    async def _write_forever(self) -> None:
        while True:
            ok = await self._flush()
            await asyncio.sleep(FLUSH_INTERVAL_S if ok else RETRY_INTERVAL_S)

    async def _flush(self) -> bool:
        # Only what is buffered now: records that arrive during the writes wait for the next
        # flush. Chasing them kept the writer busy with batches of one or two under load.
        pending = len(self._buffer)
        while pending > 0:
            batch = self._buffer[: min(BATCH_SIZE, pending)]
            try:
                await self._sink.write(batch)
            except Exception as exc:  # outage: keep the batch, retry later
                log.warning("shadow log write failed, will retry: %s", exc)
                return False
            del self._buffer[: len(batch)]
            pending -= len(batch)
            for model, record in batch:
                if "error" not in record:
                    self._metrics.shadow_record(model, record["shadow_variant"], "logged")
        return True
