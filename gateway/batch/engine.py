"""Running a batch job: checkpoint, chunks, merge (README "Batch inference").

`run_batch` checks the job (`plan_job`, exit code 2 before anything is written), opens or
resumes its checkpoint, predicts every chunk the checkpoint does not list, with the local engine
(this process, one in-process gateway) or the Ray engine (`gateway.batch.ray_engine`), then
merges the parts into the output file. Both engines call the same `predict_chunk`.
"""

import asyncio
import contextlib
import os
import socket
import sys
from collections.abc import AsyncIterator, Callable, Iterator

import numpy as np
import pyarrow as pa
from prometheus_client import CollectorRegistry, push_to_gateway
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from gateway.batch.checkpoint import Checkpoint
from gateway.batch.files import write_atomically
from gateway.batch.plan import VARIANT_COLUMN, BatchJob, Plan, plan_job
from gateway.batch.predict import BatchFailed, ChunkPredictor
from gateway.lifecycle import Gateway

Done = Callable[[int, int], None]  # (chunk, rows): a chunk's part is written


def run_batch(job: BatchJob, engine: str = "local", workers: int = 1) -> int:
    """Predict every row of `job.input` into `job.output`; the number of rows written."""
    plan = plan_job(job)
    checkpoint = Checkpoint(job.output, plan.fingerprint())
    checkpoint.open()
    if checkpoint.done:
        print(
            f"gateway batch: resuming {checkpoint.folder}: {len(checkpoint.done)} chunks "
            f"({sum(checkpoint.done.values())} rows) already done",
            file=sys.stderr,
        )
    with _progress(plan, checkpoint) as done:
        if engine == "ray":
            from gateway.batch.ray_engine import run_on_ray

            chunks = -(-plan.input.count_rows() // job.chunk_rows)
            pending = [chunk for chunk in range(chunks) if chunk not in checkpoint.done]
            run_on_ray(job, pending, done, workers)
        else:
            asyncio.run(_run_local(plan, checkpoint, done))
    return _merge(plan, checkpoint)


async def _run_local(plan: Plan, checkpoint: Checkpoint, done: Done) -> None:
    rows = plan.job.chunk_rows
    async with running(plan) as predictor:
        for chunk, table in enumerate(plan.input.chunks(rows, plan.read_columns)):
            if chunk not in checkpoint.done:
                done(chunk, await predict_chunk(predictor, checkpoint, chunk, table))


async def predict_chunk(
    predictor: ChunkPredictor, checkpoint: Checkpoint, chunk: int, table: pa.Table
) -> int:
    """The per-chunk function of both engines: predict chunk number `chunk` (`table`, its rows)
    and write its part file; its rows. Marking it done in the manifest is the driver's."""
    predicted = await predictor.predict(table, chunk * predictor.plan.job.chunk_rows)
    checkpoint.save_part(chunk, predicted)
    return int(table.num_rows)


@contextlib.asynccontextmanager
async def running(plan: Plan) -> AsyncIterator[ChunkPredictor]:
    """An in-process gateway for the plan's model (as `serve` builds one) and its predictor."""
    registry = CollectorRegistry()
    gateway = Gateway(plan.settings, registry, plan.repository)
    service = await gateway.start()
    try:
        if not service.ready:
            raise BatchFailed(f"the gateway is not ready: {service.unready_reason}")
        yield ChunkPredictor(plan, service)
    finally:
        await gateway.stop()
        if plan.job.pushgateway:
            _push(plan, registry)


def _push(plan: Plan, registry: CollectorRegistry) -> None:
    """This process's metrics to a Pushgateway, as Prometheus advises for batch jobs (job
    `gateway_batch`, grouped by model and instance); a failure is reported, not raised."""
    instance = f"{socket.gethostname()}:{os.getpid()}"
    try:
        push_to_gateway(
            str(plan.job.pushgateway),
            job="gateway_batch",
            registry=registry,
            grouping_key={"model": plan.job.model, "instance": instance},
            timeout=10,
        )
    except OSError as exc:
        print(
            f"gateway batch: metrics not pushed to {plan.job.pushgateway}: {exc}", file=sys.stderr
        )


def _merge(plan: Plan, checkpoint: Checkpoint) -> int:
    """Write the parts, in chunk order, into the output file; remove the parts folder."""
    rows = sum(checkpoint.done.values())
    parts = checkpoint.parts()
    first = next(parts, None)
    if first is None:  # an input without rows: an output without rows
        write_atomically([], empty_schema(plan), plan.job.output)
    else:
        try:
            write_atomically(_chain(first, parts), first.schema, plan.job.output)
        except pa.ArrowInvalid as exc:  # parts of other columns: variants with other outputs
            raise BatchFailed(f"the parts cannot be merged ({exc}); choose one --variant") from None
    checkpoint.remove()
    return rows


def empty_schema(plan: Plan) -> pa.Schema:
    """The output's columns when no row was predicted, from the live variant's outputs."""
    job = plan.job
    ids = plan.input.schema.field(job.id_column).type if plan.has_ids else pa.int64()
    fields = [pa.field(job.id_column, ids), pa.field(VARIANT_COLUMN, pa.string())]
    live = plan.repository.session(job.model, plan.settings.models[job.model].routing.live)
    for spec in live.outputs:
        kind = pa.from_numpy_dtype(spec.dtype)
        if len(spec.shape) > 1:  # a fixed-size list when every dimension is known
            known = all(dim >= 0 for dim in spec.shape[1:])
            kind = pa.list_(kind, int(np.prod(spec.shape[1:]))) if known else pa.list_(kind)
        fields.append(pa.field(spec.name, kind))
    return pa.schema(fields)


def _chain(first: pa.Table, rest: Iterator[pa.Table]) -> Iterator[pa.Table]:
    yield first
    yield from rest


@contextlib.contextmanager
def _progress(plan: Plan, checkpoint: Checkpoint) -> Iterator[Done]:
    """A rich progress bar of rows on standard error; `done` records a chunk and advances it."""
    total = plan.input.count_rows() if plan.input.format == "parquet" else None
    columns = (
        TextColumn(f"{plan.job.model} {plan.job.input.name}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("rows"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=Console(stderr=True)) as progress:
        task = progress.add_task("rows", total=total, completed=sum(checkpoint.done.values()))

        def done(chunk: int, rows: int) -> None:
            checkpoint.mark(chunk, rows)
            progress.advance(task, rows)

        yield done
