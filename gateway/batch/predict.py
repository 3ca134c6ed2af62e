"""The per-chunk function: a table of rows in, a table of predictions out, through the
InferenceService as every HTTP request goes (README "Batch inference").

Each row is a request of its own: it is routed alone (live or canary, by the routing's weights,
or by the sticky column's value as the sticky header's; `--variant` sends every row straight to
one variant), its id is its request id (feedback and shadow records join on it), and it is
counted in `gateway_requests_total` with the duration of the run that answered it. Rows that
took the same route run together, in requests of at most `batch_rows` rows, as many at once
as the runner has threads (one per core).
"""

import asyncio
import time
from collections.abc import Mapping

import numpy as np
import pyarrow as pa

from gateway.batch.plan import VARIANT_COLUMN, Plan
from gateway.errors import GatewayError, InferenceTimeout
from gateway.routing import Route
from gateway.service import InferenceService
from gateway.types import InferRequest, InferResult

Rows = slice | np.ndarray  # the rows of a chunk that one request carries
NO_HEADERS: Mapping[bytes, bytes] = {}


class BatchFailed(Exception):
    """A chunk could not be predicted; the message says why (the job stops, resumable)."""


class ChunkPredictor:
    """Predicts chunks of one plan's input with one running service."""

    def __init__(self, plan: Plan, service: InferenceService) -> None:
        self.plan = plan
        self.service = service
        self.model = plan.job.model
        self._parallel = asyncio.Semaphore(service.scheduler.runner.threads)

    async def predict(self, table: pa.Table, first_row: int) -> pa.Table:
        """Predictions for `table`, whose first row is row `first_row` of the file: the id
        column, `variant`, and one column per model output (fixed-size lists for vectors)."""
        rows = table.num_rows
        ids = self._ids(table, first_row)
        request_ids = [str(value) for value in ids.to_pylist()]
        inputs = self.plan.mapping.arrays(table)
        requests = [
            self._request(route, part, inputs, request_ids)
            for route, picked in self._routes(table).items()
            for part in _split(picked, rows, self.plan.job.batch_rows)
        ]
        answers = await asyncio.gather(*requests)
        return _predictions(self.plan.job.id_column, ids, rows, answers)

    def _ids(self, table: pa.Table, first_row: int) -> pa.Array:
        if not self.plan.has_ids:
            return pa.array(np.arange(first_row, first_row + table.num_rows, dtype=np.int64))
        ids = table.column(self.plan.job.id_column).combine_chunks()
        if ids.null_count:
            raise BatchFailed(f"id column {self.plan.job.id_column!r} has a null value")
        return ids

    def _routes(self, table: pa.Table) -> dict[Route, list[int] | None]:
        """Each route taken and the rows that took it (None: every row)."""
        if self.plan.job.variant is not None:
            return {self.service.direct(self.model, self.plan.job.variant): None}
        route, service, model = self.service.route, self.service, self.model
        if self.plan.sticky_column is None:
            chosen = [route(model, NO_HEADERS) for _ in range(table.num_rows)]
        else:
            header = str(service.table.get(model).sticky_header).encode("latin-1")
            values = table.column(self.plan.sticky_column).to_pylist()
            chosen = [
                route(model, NO_HEADERS if v is None else {header: str(v).encode("latin-1")})
                for v in values
            ]
        groups: dict[Route, list[int]] = {}
        for row, taken in enumerate(chosen):
            groups.setdefault(taken, []).append(row)
        if len(groups) == 1:  # one route for all: contiguous slices, no copies
            return dict.fromkeys(groups)
        return dict(groups)

    async def _request(
        self, route: Route, rows: Rows, inputs: dict[str, np.ndarray], request_ids: list[str]
    ) -> tuple[Rows, InferResult]:
        service, model = self.service, self.model
        part = {name: array[rows] for name, array in inputs.items()}
        ids = request_ids[rows] if isinstance(rows, slice) else [request_ids[i] for i in rows]
        async with self._parallel:
            started = time.perf_counter()
            try:
                session = service.session(model, route.variant)
                result = await service.infer(
                    session, route, InferRequest(ids[0], part), ids[0], started, row_ids=ids
                )
            except GatewayError as exc:
                _count(service, model, route, len(ids), exc.status_code, started)
                hint = " (lower --batch-rows)" if isinstance(exc, InferenceTimeout) else ""
                raise BatchFailed(f"rows {ids[0]} to {ids[-1]}: {exc.message}{hint}") from None
            _count(service, model, route, len(ids), 200, started)
        return rows, result


def _split(picked: list[int] | None, rows: int, batch_rows: int) -> list[Rows]:
    if picked is None:
        return [slice(start, start + batch_rows) for start in range(0, rows, batch_rows)]
    indices = np.asarray(picked)
    return [indices[start : start + batch_rows] for start in range(0, len(indices), batch_rows)]


def _count(
    service: InferenceService, model: str, route: Route, rows: int, code: int, started: float
) -> None:
    seconds = time.perf_counter() - started
    for _ in range(rows):
        service.metrics.observe_request(model, route.variant, route.role, code, seconds)


def _predictions(
    id_column: str, ids: pa.Array, rows: int, answers: list[tuple[Rows, InferResult]]
) -> pa.Table:
    """Scatter each request's answers back to its rows, as Arrow columns."""
    variants = np.empty(rows, dtype=object)
    outputs: dict[str, np.ndarray] = {}
    filled: dict[str, int] = {}
    for picked, result in answers:
        variants[picked] = result.variant
        for name, array in result.outputs.items():
            count = len(variants[picked])
            if array.ndim == 0 or array.shape[0] != count:
                raise BatchFailed(f"output {name!r} has no batch dimension: {list(array.shape)}")
            found = outputs.setdefault(name, np.empty((rows, *array.shape[1:]), array.dtype))
            if found.shape[1:] != array.shape[1:] or found.dtype != array.dtype:
                raise _different_outputs(name)
            found[picked] = array
            filled[name] = filled.get(name, 0) + count
    if any(count != rows for count in filled.values()):
        raise _different_outputs(min(filled, key=filled.__getitem__))
    columns = {id_column: ids, VARIANT_COLUMN: pa.array(variants, pa.string())}
    columns.update({name: _column(array) for name, array in outputs.items()})
    return pa.table(columns)


def _different_outputs(name: str) -> BatchFailed:
    return BatchFailed(
        f"the variants that answered differ in output {name!r} (its presence, shape or "
        "datatype); choose one with --variant"
    )


def _column(array: np.ndarray) -> pa.Array:
    """A column per row: a value, or a fixed-size list of the row's values (row-major)."""
    if array.ndim == 1:
        return pa.array(array)
    width = int(np.prod(array.shape[1:]))
    flat = pa.array(np.ascontiguousarray(array).reshape(-1))
    return pa.FixedSizeListArray.from_arrays(flat, width)
