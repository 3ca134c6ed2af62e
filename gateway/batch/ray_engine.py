"""`gateway batch --engine ray`: the chunks as a Ray Data `map_batches` job (README "Batch
inference"; Ray is the optional extra `ray`).

The dataset is the chunks still to do (their numbers); `map_batches` hands them, one at a time,
to a pool of `workers` actors (Ray Data's callable-class form, `concurrency=workers`). Each actor
checks the job and starts its own in-process gateway once, as the local engine does, then for
each chunk reads its rows from the input file, runs `predict_chunk` and writes its part file,
and answers the chunk's number and rows. The driver marks each chunk done as its answer streams
back, so a job stopped half-way resumes from its checkpoint like a local one. The input file
and the output's folder must be on storage every Ray node reaches (a shared volume, NFS).

Ray is started locally by `ray.init(num_cpus=workers)` (without its dashboard) unless the
process is already connected to a cluster, or `RAY_ADDRESS` names one (Ray's own variable, read
by `ray.init`).
"""

import asyncio
import os
from collections.abc import Callable
from typing import Any

from gateway.batch.checkpoint import Checkpoint
from gateway.batch.plan import BatchJob, plan_job
from gateway.batch.predict import BatchFailed
from gateway.errors import ConfigError


def run_on_ray(
    job: BatchJob, pending: list[int], done: Callable[[int, int], None], workers: int
) -> None:
    """Predict the `pending` chunks on Ray; `done(chunk, rows)` as each one's part is written."""
    if not pending:
        return
    ray = _import_ray()
    if not ray.is_initialized():
        local = "RAY_ADDRESS" not in os.environ
        # A local instance sized for the actors asked for, without the dashboard it won't show.
        ray.init(num_cpus=workers if local else None, include_dashboard=False if local else None)
    ray.data.DataContext.get_current().enable_progress_bars = False  # ours is on stderr
    chunks = ray.data.from_items([{"chunk": chunk} for chunk in pending])
    answers = chunks.map_batches(
        ChunkWorker,
        fn_constructor_kwargs={"job": job},
        batch_size=1,
        concurrency=max(1, min(workers, len(pending))),
        num_cpus=1,
    )
    try:
        for answer in answers.iter_rows():
            done(int(answer["chunk"]), int(answer["rows"]))
    except Exception as exc:  # a chunk's error, raised again in the driver by Ray (any type)
        raise BatchFailed(f"the Ray job failed: {_cause(exc)}") from None


class ChunkWorker:
    """A Ray actor: one in-process gateway, and the chunks it is handed."""

    def __init__(self, job: BatchJob) -> None:
        from gateway.batch.engine import running

        self.plan = plan_job(job)
        self.checkpoint = Checkpoint(job.output, self.plan.fingerprint())
        self.loop = asyncio.new_event_loop()
        self._running = running(self.plan)
        self.predictor = self.loop.run_until_complete(self._running.__aenter__())

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[int]]:
        from gateway.batch.engine import predict_chunk

        job = self.plan.job
        found: dict[str, list[int]] = {"chunk": [], "rows": []}
        for chunk in (int(value) for value in batch["chunk"]):
            table = self.plan.input.chunk(chunk, job.chunk_rows, self.plan.read_columns)
            rows = self.loop.run_until_complete(
                predict_chunk(self.predictor, self.checkpoint, chunk, table)
            )
            found["chunk"].append(chunk)
            found["rows"].append(rows)
        return found

    def __del__(self) -> None:
        loop = getattr(self, "loop", None)
        if loop is not None and not loop.is_closed():
            loop.run_until_complete(self._running.__aexit__(None, None, None))
            loop.close()


def _cause(exc: Exception) -> str:
    """The message of the error that stopped an actor, without Ray's traceback around it."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, Exception) and cause is not exc:
        return _cause(cause)
    lines = str(exc).strip().splitlines()
    return lines[-1] if lines else type(exc).__name__


def _import_ray() -> Any:
    try:
        import ray
        import ray.data
    except ImportError:
        raise ConfigError(
            "--engine ray needs Ray: pip install 'model-gateway[ray]' (or --engine local)"
        ) from None
    return ray
