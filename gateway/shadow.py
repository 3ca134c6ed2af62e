"""Shadow mirroring: run sampled copies of live traffic at background priority, log the answers.

README, "Shipping new versions": a shadow never delays or fails the caller. Shadow runs happen
on their own threads (`shadow_concurrency` of them) at the operating system's idle priority
(SCHED_IDLE on Linux): they get a core only when live requests leave it free, and onnxruntime
releases the GIL while it computes. Run on the event loop instead, a 100% shadow of a small
model made callers a third slower on a busy core: its CPU time landed between their requests.

Two bounded places hold work: the job queue (runs waiting) and the record buffer (records waiting
to be written). When either is full the newest item is dropped and counted, so a core saturated
by live traffic sheds shadow work rather than slowing the live work. A writer task on the event
loop collects finished records, counts them (metrics are recorded on the loop, without locks) and
writes them in batches to a `ShadowSink` (a Redis stream per model, or a JSON-lines file per
model in embedded mode). A failed write keeps the batch for the next try, so an outage loses only
what the buffer cannot hold.
"""

import asyncio
import collections
import contextlib
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import onnxruntime as ort
import orjson

from gateway.errors import GatewayError
from gateway.metrics import Metrics
from gateway.protocol.tensors import dumps
from gateway.runtime import ModelRepository, run_checked
from gateway.types import InferResult

log = logging.getLogger(__name__)

Record = dict[str, str]
Finished = tuple["ShadowJob", Record | None, dict[str, np.ndarray]]
Observe = Callable[[str, str, str, str, dict[str, np.ndarray], dict[str, np.ndarray]], None]
FLUSH_INTERVAL_S = 0.1
RETRY_INTERVAL_S = 1.0
BATCH_SIZE = 500
STOP_GRACE_S = 1.0  # after close's timeout, for stopped runs to hand in their records


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


def compared_outputs(live: InferResult, shadow_outputs: list[str]) -> list[tuple[str, str]]:
    """Which shadow output is compared with which live output, as (live, shadow) pairs.

    By name where the shadow has live's outputs; when it has none of them (a re-exported model
    whose outputs were renamed), by position in each model's declared outputs. Only outputs the
    caller received are compared. Empty when nothing pairs up: the record then disagrees.
    """
    by_name = [(name, name) for name in live.outputs if name in shadow_outputs]
    if by_name:
        return by_name
    return [
        (name, shadow)
        for name, shadow in zip(live.specs, shadow_outputs, strict=False)
        if name in live.outputs
    ]


def _close(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and bool(np.allclose(a, b, rtol=1e-4, atol=1e-5, equal_nan=True))


def _json(tensors: Mapping[str, np.ndarray]) -> str:
    """Tensors as JSON, NaN and infinities as literals, so that a record replays exactly."""
    try:  # straight from the arrays' memory, several times faster than building Python lists
        return dumps(tensors).decode()
    except orjson.JSONEncodeError:  # 0-d or non-contiguous arrays, which orjson refuses
        return dumps({name: array.tolist() for name, array in tensors.items()}).decode()


class ShadowLog:
    """Runs shadow jobs on background-priority threads and writes their records in batches."""

    def __init__(
        self,
        repository: ModelRepository,
        sink: ShadowSink,
        metrics: Metrics,
        *,
        log_inputs: Mapping[str, bool],
        queue_size: int,
        concurrency: int,
        max_batch_size: Mapping[tuple[str, str], int] | None = None,
    ) -> None:
        self.repository = repository
        self.log_inputs = dict(log_inputs)
        # Rows a shadow run may join, by (model, variant): the variant's own max_batch_size.
        self.max_batch_size = dict(max_batch_size or {})
        self._sink = sink
        self._metrics = metrics
        self._queue_size = queue_size
        self._concurrency = concurrency
        self._jobs: queue.SimpleQueue[ShadowJob | None] = queue.SimpleQueue()  # None: stop
        self._running: dict[int, tuple[ShadowJob, ort.RunOptions]] = {}  # by thread id
        # Threads append, the writer pops: both are atomic on a deque, no lock needed.
        self._finished: collections.deque[Finished] = collections.deque()
        # Called on the event loop with each shadow answer (the monitor's `observe`), if set.
        self.observe: Observe | None = None
        self._buffer: list[tuple[str, Record]] = []
        self._threads: list[threading.Thread] = []
        self._writer: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    def start(self) -> None:
        """Start the shadow threads and the writer (inside the running event loop)."""
        self._threads = [
            threading.Thread(target=self._work, name=f"gateway-shadow-{i}", daemon=True)
            for i in range(self._concurrency)
        ]
        for thread in self._threads:
            thread.start()
        self._writer = asyncio.create_task(self._write_forever())

    def submit(self, job: ShadowJob) -> None:
        """Queue a shadow run, or drop and count it when the queue is full. Never blocks."""
        if self._jobs.qsize() >= self._queue_size:
            self._metrics.shadow_record(job.model, job.variant, "dropped")
        else:
            self._jobs.put(job)

    async def close(self, timeout: float = 5.0) -> None:
        """Finish queued jobs and write what is buffered.

        Runs get `timeout` seconds (then a moment to stop); the last writes are bounded by the
        sink's own timeouts (Redis: 2 s a call)."""
        deadline = time.monotonic() + timeout
        for _ in self._threads:
            self._jobs.put(None)  # after the queued jobs: each thread stops when it reaches one
        await asyncio.to_thread(_join, self._threads, deadline)
        # What could not be run in time is lost: count it, as every loss is. Runs still going
        # are told to stop at their next node, and get a moment to hand in their records.
        while not self._jobs.empty():
            job = self._jobs.get_nowait()
            if job is not None:
                self._metrics.shadow_record(job.model, job.variant, "dropped")
        for _, options in list(self._running.values()):
            options.terminate = True
        await asyncio.to_thread(_join, self._threads, time.monotonic() + STOP_GRACE_S)
        # The writer finishes the write it is in (cancelled, it could not know whether the
        # batch was written); then one last flush, bounded by the sinks' own timeouts.
        self._stopping.set()
        if self._writer is not None:
            await self._writer
        await self._flush()
        for model, record in self._buffer:
            self._metrics.shadow_record(model, record["shadow_variant"], "dropped")
        await self._sink.close()

    def _work(self) -> None:
        background_priority()
        thread = threading.get_ident()
        later: collections.deque[ShadowJob | None] = collections.deque()  # taken, not joinable
        while (job := later.popleft() if later else self._jobs.get()) is not None:
            jobs = self._joined(job, later)
            options = ort.RunOptions()
            self._running[thread] = (job, options)
            done: list[Finished] = [(each, None, {}) for each in jobs]
            try:
                done = self._run(jobs, options)
            except Exception:  # a broken shadow must never stop the thread
                log.exception("shadow run of %s/%s failed", job.model, job.variant)
            finally:
                del self._running[thread]
            self._finished.extend(done)

    def _joined(
        self, job: ShadowJob, later: collections.deque[ShadowJob | None]
    ) -> list[ShadowJob]:
        """`job` and the queued jobs that can run with it as one batch (README "Batching and
        admission": shadows batch too), taking what is waiting now and never waiting for more.
        Jobs taken that cannot join go to `later`, in order."""
        limit = self.max_batch_size.get((job.model, job.variant), 0)
        key = _batch_key(job)
        if not limit or key is None:
            return [job]
        jobs, rows = [job], _rows(job)
        while rows < limit and not self._jobs.empty():
            other = self._jobs.get_nowait()
            if other is not None and _batch_key(other) == key and rows + _rows(other) <= limit:
                jobs.append(other)
                rows += _rows(other)
            else:
                later.append(other)
                if other is None:
                    break
        return jobs

    def _run(self, jobs: list[ShadowJob], options: ort.RunOptions) -> list[Finished]:
        """Run `jobs` (one batch) and make each one's record; a batch that fails runs each job
        alone, so that only the jobs the model refuses fail."""
        job = jobs[0]
        session = self.repository.session(job.model, job.variant)
        pairs = compared_outputs(job.live, session.output_names)
        names = [shadow for _, shadow in pairs] or session.output_names
        inputs = job.inputs
        if len(jobs) > 1:
            inputs = {name: np.concatenate([each.inputs[name] for each in jobs]) for name in inputs}
        # The thread's own CPU time: at background priority the wall time would also count
        # every live request that took the core in between.
        started = time.thread_time()
        error = None
        try:
            outputs = run_checked(session, inputs, names, options)
        except GatewayError as exc:
            if len(jobs) > 1:
                return [done for each in jobs for done in self._run([each], options)]
            outputs, error = {}, exc.message
        seconds = time.thread_time() - started
        yield_gil()  # between the run and the comparisons and encoding
        if len(jobs) == 1:
            return [(job, self._record(job, outputs, pairs, seconds, error), outputs)]
        finished: list[Finished] = []
        start = 0
        for each in jobs:
            end = start + _rows(each)
            own = {name: array[start:end] for name, array in outputs.items()}
            finished.append((each, self._record(each, own, pairs, seconds, error), own))
            start = end
        return finished

    def _record(
        self,
        job: ShadowJob,
        outputs: dict[str, np.ndarray],
        pairs: list[tuple[str, str]],
        seconds: float,
        error: str | None,
    ) -> Record:
        as_live = {live: outputs[shadow] for live, shadow in pairs if shadow in outputs}
        agrees = error is None and agree(job.live.outputs, as_live)
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
            "compared": ",".join(f"{live}={shadow}" for live, shadow in pairs),
        }
        if self.log_inputs.get(job.model, True):
            record["inputs"] = _json(job.inputs)
        if error is not None:
            record["error"] = error
        return record

    def _collect(self) -> None:
        """Count the finished runs and move their records into the buffer (or drop them)."""
        while self._finished:
            job, record, outputs = self._finished.popleft()
            if record is None or "error" in record:
                self._metrics.shadow_record(job.model, job.variant, "error")
            else:
                self._metrics.shadow_comparison(job.model, job.variant, record["agree"] == "1")
                if self.observe is not None:
                    self.observe(
                        job.model, job.variant, "shadow", job.request_id, job.inputs, outputs
                    )
            if record is None:
                continue
            shadow_seconds = float(record["shadow_ms"]) / 1000
            self._metrics.shadow_run(job.model, job.variant, shadow_seconds, job.live_seconds)
            if len(self._buffer) >= self._queue_size:
                self._metrics.shadow_record(job.model, job.variant, "dropped")
            else:
                self._buffer.append((job.model, record))

    async def _write_forever(self) -> None:
        while not self._stopping.is_set():
            ok = await self._flush()
            with contextlib.suppress(TimeoutError):
                pause = FLUSH_INTERVAL_S if ok else RETRY_INTERVAL_S
                await asyncio.wait_for(self._stopping.wait(), pause)

    async def _flush(self) -> bool:
        self._collect()
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


def _rows(job: ShadowJob) -> int:
    """The batch rows of a job that has a batch key."""
    return int(next(iter(job.inputs.values())).shape[0])


def _batch_key(job: ShadowJob) -> tuple[object, ...] | None:
    """Jobs with equal keys may run as one batch; None: this job runs alone."""
    if not job.inputs or any(array.ndim == 0 for array in job.inputs.values()):
        return None
    rows = _rows(job)
    if not rows or any(array.shape[0] != rows for array in job.inputs.values()):
        return None
    shapes = tuple((name, array.dtype.str, array.shape[1:]) for name, array in job.inputs.items())
    return job.model, job.variant, tuple(job.live.outputs), shapes


def background_priority() -> None:
    """Let the calling thread have a core only when nothing else wants it (Linux SCHED_IDLE).

    Elsewhere the thread keeps the normal priority: shadows then share the CPU with callers.
    """
    with contextlib.suppress(AttributeError, OSError):
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))


def yield_gil() -> None:
    """Let the event loop take the GIL if it is waiting for it.

    A background-priority thread that holds the GIL while running Python keeps a woken event
    loop waiting until it lets go (up to the 5 ms switch interval): cut its work into short
    stretches. The loop's thread, at normal priority, takes the core as soon as it is woken.
    """
    time.sleep(0)


def _join(threads: list[threading.Thread], deadline: float) -> None:
    for thread in threads:
        thread.join(max(deadline - time.monotonic(), 0.0))
