"""Model monitoring: live profiles, drift against a reference, and online metrics from feedback.

README "Monitoring". The request path only hands over what it already holds (`observe`: one
list append). On the event loop, every FOLD_INTERVAL_S a task keeps each answer's prediction for
feedback and folds answers into the live profiles (numpy, vectorized over the interval's
answers, in chunks with returns to the loop between them); every `monitor_interval_s` it shares
this worker's window with the others (Redis) and computes the statistics every worker exports,
so a scrape of any worker shows the same values.

    observe(model, variant, role, request id, inputs, outputs)   request path, O(1)
        -> every 50 ms: predictions kept (feedback store), answers folded into this worker's window
        -> every monitor_interval_s: window shared (Redis hash) -> merged -> statistics
"""

import asyncio
import contextlib
import logging
import math
import os
import random
import socket
import time
import uuid
from collections import defaultdict, deque
from collections.abc import Awaitable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

import numpy as np
import orjson
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric

from gateway.errors import ConfigError, Conflict, NotFound, Unavailable, redis_errors
from gateway.files import replace_file
from gateway.metrics import Metrics
from gateway.monitoring.drift import class_statistics, numeric_statistics
from gateway.monitoring.feedback import FeedbackStore, MemoryFeedback, RedisFeedback, Scores
from gateway.monitoring.layout import Layout, columns, stack
from gateway.monitoring.profiles import Counts, Reference, Window
from gateway.monitoring.reference_file import read_reference
from gateway.routing import RoutingTable
from gateway.runtime import ModelRepository, ModelSession
from gateway.settings import MonitoringConfig, Settings

if TYPE_CHECKING:  # imported only with Redis: gateway.errors.redis_errors
    import redis.asyncio as aioredis

log = logging.getLogger(__name__)
T = TypeVar("T")

MAX_PENDING = 100_000  # answers waiting for the next fold; beyond it they are dropped, counted
FOLD_INTERVAL_S = 0.05  # how often answers handed over are folded
PROFILED_PER_S = 1000  # answers per variant a second counted into live profiles at most
PROFILE_CHUNK = 250  # answers profiled between two returns to the event loop
KEEP_CHUNK = 500  # answers kept for feedback between two returns to the event loop
STATISTICS_CHUNK = 8  # features compared (scipy) between two returns to the event loop
KEEP_ROWS = 10_000  # recent live rows per model, to pin a reference from
REFERENCE_BATCH = 1024  # reference rows per model run
LIVE_KEY = "gateway:monitor:{model}:live"
REFERENCE_KEY = "gateway:monitor:{model}:reference"


class Observed(NamedTuple):
    model: str
    variant: str
    role: str
    request_id: str
    inputs: dict[str, np.ndarray]
    outputs: dict[str, np.ndarray]


class Feedback(NamedTuple):
    """One piece of ground truth: a label or value, or one per row of the request's batch."""

    request_id: str
    truth: float | list[float]


@dataclass(frozen=True)
class Prediction:
    """What feedback is compared with: an output read as a label, an argmax or a value."""

    output: str
    kind: str  # "label", "argmax" or "value"

    @property
    def task(self) -> str:
        return "regression" if self.kind == "value" else "classification"

    def of(self, tensor: np.ndarray) -> np.ndarray:
        """One prediction per row of `tensor` (rows first)."""
        matrix = tensor.reshape(tensor.shape[0], -1)
        if self.kind == "argmax":
            labels: np.ndarray = matrix.argmax(axis=1)
            return labels
        if self.kind == "label":
            return matrix[:, 0].astype(np.int64)
        return matrix[:, 0].astype(np.float64)


@dataclass
class _Variant:
    """One variant's layout, windows and how its answers are scored."""

    session: ModelSession
    layout: Layout
    prediction: Prediction | None
    inputs: Window
    outputs: Window


@dataclass
class _Recent:
    """The last live rows of a model (at most KEEP_ROWS), for a reference pinned from live."""

    variant: str = ""
    chunks: deque[tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]] = field(
        default_factory=deque
    )
    rows: int = 0

    def add(
        self, variant: str, x: np.ndarray, y: np.ndarray, labels: dict[str, np.ndarray]
    ) -> None:
        if variant != self.variant:  # a flip: rows of another variant's outputs do not mix
            self.chunks.clear()
            self.rows, self.variant = 0, variant
        self.chunks.append((x, y, labels))
        self.rows += x.shape[0]
        while self.rows - self.chunks[0][0].shape[0] >= KEEP_ROWS:
            self.rows -= self.chunks.popleft()[0].shape[0]


class Monitor:
    """Live profiles, drift and online metrics of every monitored model of one worker."""

    def __init__(
        self,
        settings: Settings,
        repository: ModelRepository,
        table: RoutingTable,
        metrics: Metrics,
        registry: CollectorRegistry,
        redis_client: "aioredis.Redis | None",
    ) -> None:
        self.settings = settings
        self.repository = repository
        self._table = table
        self._metrics = metrics
        self._redis = redis_client
        self.feedback_store: FeedbackStore = (
            MemoryFeedback(settings.feedback_ttl_s, settings.feedback_max_predictions)
            if self._redis is None
            else RedisFeedback(self._redis, settings.feedback_ttl_s)
        )
        self._enabled = {n for n, m in settings.models.items() if m.monitoring.enabled}
        self._pending: list[Observed] = []
        self._folded_at = time.time()  # when the answers pending now began to gather
        self._variants: dict[tuple[str, str], _Variant] = {}
        self._references: dict[str, Reference] = {}
        self._recent: dict[str, _Recent] = {}
        self._reports: dict[str, dict[str, Any]] = {}
        self._scores: dict[str, Scores] = {}
        self._worker = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._task: asyncio.Task[None] | None = None
        self._unreadable: set[str] = set()  # models whose reference file could not be read
        registry.register(self)

    # -- the request path ------------------------------------------------------------------

    def observe(
        self,
        model: str,
        variant: str,
        role: str,
        request_id: str,
        inputs: dict[str, np.ndarray],
        outputs: dict[str, np.ndarray],
    ) -> None:
        """Hand one answer over to the next fold (no work here beyond an append)."""
        if model in self._enabled:
            if len(self._pending) < MAX_PENDING:
                self._pending.append(Observed(model, variant, role, request_id, inputs, outputs))
            else:
                self._metrics.monitor_dropped(model)

    # -- life cycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Load or build the references, then fold every `monitor_interval_s`."""
        for model in sorted(self._enabled):
            try:
                await self._refresh_reference(model)
            except Unavailable as exc:  # Redis down: the next ticks ask again
                log.warning("monitoring of %s: reference not loaded yet: %s", model, exc)
        self._task = asyncio.create_task(self._run(), name="gateway-monitor")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def configure(self, settings: Settings, repository: ModelRepository) -> None:
        """Use a reloaded config and repository (variants are looked up again)."""
        self.settings, self.repository = settings, repository
        self._enabled = {n for n, m in settings.models.items() if m.monitoring.enabled}
        self._variants.clear()

    async def _run(self) -> None:
        """Fold every FOLD_INTERVAL_S (small bursts of work: a request never waits behind a
        second's worth of answers), share and compare every `monitor_interval_s`."""
        loop = asyncio.get_running_loop()
        due = loop.time() + self.settings.monitor_interval_s
        while True:
            await asyncio.sleep(FOLD_INTERVAL_S)
            try:
                await self._fold_pending(time.time())
                if loop.time() >= due:
                    due = loop.time() + self.settings.monitor_interval_s
                    await self.tick()
            except Exception:  # monitoring must never stop: the next round tries again
                log.exception("monitoring failed")

    async def tick(self) -> None:
        """Fold what was observed, keep predictions, share and merge windows, compute."""
        now = time.time()
        await self._fold_pending(now)
        for model in sorted(self._enabled):
            await self._refresh(model, now)

    async def _refresh(self, model: str, now: float) -> dict[str, Any]:
        """Follow the stored reference, merge the windows, read the scores, compute."""
        with contextlib.suppress(Unavailable):
            await self._refresh_reference(model)
        await self._auto_pin(model)
        merged = await self._merged(model, now)
        try:
            self._scores[model] = await self.feedback_store.scores(model)
        except redis_errors() as exc:
            log.warning("online metrics of %s not read: %s", model, exc)
        report = self._reports[model] = await self._report(model, merged)
        return report

    # -- folding -----------------------------------------------------------------------------

    async def _fold_pending(self, now: float) -> None:
        """Keep every answer's prediction for feedback, and fold answers into the live
        profiles: all of them up to PROFILED_PER_S a second per variant, else a uniform sample
        of that many (the statistics need no more, and the cost stays flat under load).

        On the event loop, in chunks with a return to the loop between them, so a request
        waits for at most one chunk (a fraction of a millisecond). On a thread of its own the
        work fought the event loop for the GIL, which cost far more.
        """
        pending, self._pending = self._pending, []
        # The cap is a rate: answers that gathered for longer than FOLD_INTERVAL_S (a slow
        # tick, a busy machine) get a budget as long as the time they gathered over.
        gathered_s, self._folded_at = max(now - self._folded_at, FOLD_INTERVAL_S), now
        groups: defaultdict[tuple[str, ...], list[Observed]] = defaultdict(list)
        for start in range(0, len(pending), KEEP_CHUNK):
            chunk: defaultdict[tuple[str, ...], list[Observed]] = defaultdict(list)
            for item in pending[start : start + KEEP_CHUNK]:
                chunk[item[:3]].append(item)  # model, variant, role
            for (model, variant, role), items in chunk.items():
                groups[(model, variant, role)] += items
                state = self._variant(model, variant)
                if state is not None and state.prediction is not None:
                    await self._keep(model, variant, state.prediction, items)
            await asyncio.sleep(0)
        budget = max(1, int(PROFILED_PER_S * gathered_s))
        for (model, variant, role), items in groups.items():
            state = self._variant(model, variant)
            if state is None:
                continue
            profiled = items if len(items) <= budget else random.sample(items, budget)
            for start in range(0, len(profiled), PROFILE_CHUNK):
                self._profile(
                    model, variant, role, state, profiled[start : start + PROFILE_CHUNK], now
                )
                await asyncio.sleep(0)

    def _profile(
        self,
        model: str,
        variant: str,
        role: str,
        state: _Variant,
        items: list[Observed],
        now: float,
    ) -> None:
        """Count answers into the variant's windows (and keep live rows to pin from)."""
        layout, reference = state.layout, self._references.get(model)
        tensors = {column.tensor for column in layout.inputs}
        joined_inputs = {name: stack([item.inputs[name] for item in items]) for name in tensors}
        x = columns(joined_inputs, layout.inputs)
        wanted = {column.tensor for column in layout.outputs} | set(layout.classes)
        complete = [item for item in items if wanted <= item.outputs.keys()]
        joined = {name: stack([item.outputs[name] for item in complete]) for name in wanted}
        y = columns(joined, layout.outputs) if complete else np.empty((0, len(layout.outputs)))
        labels = (
            {name: joined[name][:, 0].astype(np.int64) for name in layout.classes}
            if complete
            else {}
        )
        in_counts, out_counts = state.inputs.current(now), state.outputs.current(now)
        in_counts.add_numeric(x, [_ref(reference, "inputs", c.name) for c in layout.inputs])
        out_counts.add_numeric(y, [_ref(reference, "outputs", c.name) for c in layout.outputs])
        for name, values in labels.items():
            out_counts.add_classes(name, values)
        if role == "live" and len(complete) == len(items):
            self._recent.setdefault(model, _Recent()).add(variant, x, y, labels)

    async def _keep(
        self, model: str, variant: str, prediction: Prediction, items: list[Observed]
    ) -> None:
        """Keep each answer's predictions (one float64 per row) under its request id."""
        items = [item for item in items if prediction.output in item.outputs]
        if not items:
            return
        tensors = [item.outputs[prediction.output] for item in items]
        joined = stack(tensors)
        raw = prediction.of(joined).astype(np.float64).tobytes()
        if joined.shape[0] == len(items):  # one row each, the usual case: slices of 8 bytes
            chunks = [raw[i : i + 8] for i in range(0, len(raw), 8)]
        else:
            ends = np.cumsum([tensor.shape[0] if tensor.ndim else 1 for tensor in tensors]) * 8
            chunks = [raw[start:end] for start, end in zip([0, *ends[:-1]], ends, strict=True)]
        try:
            await self.feedback_store.keep(model, variant, [i.request_id for i in items], chunks)
        except redis_errors() as exc:
            log.warning("predictions of %s not kept for feedback: %s", model, exc)

    def _variant(self, model: str, variant: str) -> _Variant | None:
        try:
            session = self.repository.session(model, variant)
        except NotFound:
            return None
        state = self._variants.get((model, variant))
        if state is None or state.session is not session:
            config = self.settings.models[model].monitoring
            layout = Layout.of(session.inputs, session.outputs, config.max_features)
            state = self._variants[(model, variant)] = _Variant(
                session,
                layout,
                _prediction(config, session, layout),
                Window([c.name for c in layout.inputs], config.bins, config.window_s),
                Window([c.name for c in layout.outputs], config.bins, config.window_s),
            )
        return state

    # -- sharing windows ---------------------------------------------------------------------

    async def _merged(self, model: str, now: float) -> dict[str, tuple[Counts, Counts]]:
        """Every variant's window, summed over the workers and replicas that share Redis."""
        own = {
            variant: (state.inputs.total(now), state.outputs.total(now))
            for (name, variant), state in self._variants.items()
            if name == model
        }
        client = self._redis
        if client is None:
            return own
        key = LIVE_KEY.format(model=model)
        mine = {variant: [i.to_dict(), o.to_dict()] for variant, (i, o) in own.items()}
        window_s = self.settings.models[model].monitoring.window_s
        try:
            async with client.pipeline(transaction=False) as pipe:
                pipe.hset(key, self._worker, orjson.dumps({"ts": now, "variants": mine}))
                pipe.expire(key, int(window_s * 2) + 60)
                pipe.hgetall(key)
                _, _, everyone = await pipe.execute()
        except redis_errors() as exc:
            log.warning("live profile of %s not shared (this worker's alone): %s", model, exc)
            return own
        merged: dict[str, tuple[Counts, Counts]] = {}
        stale = []
        fresh_after = now - max(5 * self.settings.monitor_interval_s, 5.0)
        for worker, raw in everyone.items():
            entry = orjson.loads(raw)
            if entry["ts"] < fresh_after:  # a worker that stopped: its window is gone
                stale.append(worker)
                continue
            for variant, (inputs, outputs) in entry["variants"].items():
                _add(merged, variant, Counts.from_dict(inputs), Counts.from_dict(outputs))
        if stale:
            with contextlib.suppress(*redis_errors()):
                await client.hdel(key, *stale)
        return merged

    # -- references --------------------------------------------------------------------------

    async def _refresh_reference(self, model: str) -> None:
        """The stored reference (pinned or cleared by any worker); with none stored, one built
        from the config's file and stored, unless another worker stored one first."""
        stored = await self._stored_reference(model)
        path = self.settings.models[model].monitoring.reference
        if stored is None and path is not None:
            try:
                built = await asyncio.to_thread(self._reference_from_file, model, Path(path))
            except NotFound:  # the routing is not known yet (Redis down at start-up)
                return
            except ConfigError as exc:  # the file changed since start-up: say so once
                if model not in self._unreadable:
                    log.error("monitoring of %s: no reference: %s", model, exc)
                self._unreadable.add(model)
                return
            self._unreadable.discard(model)
            await self._store_reference(model, built, replace=False)
            stored = await self._stored_reference(model) or built
        if stored is None:
            self._references.pop(model, None)
        else:
            self._references[model] = stored

    def _reference_from_file(self, model: str, path: Path) -> Reference:
        live = self._live_session(model)
        inputs = read_reference(path, live.inputs)
        rows = next(iter(inputs.values())).shape[0]
        outputs: list[dict[str, np.ndarray]] = []
        for start in range(0, rows, REFERENCE_BATCH):
            batch = {name: array[start : start + REFERENCE_BATCH] for name, array in inputs.items()}
            outputs.append(live.run(batch, live.output_names))
        return self._build(model, path.name, [inputs], outputs, live)

    def _build(
        self,
        model: str,
        source: str,
        inputs: list[dict[str, np.ndarray]],
        outputs: list[dict[str, np.ndarray]],
        session: ModelSession,
    ) -> Reference:
        config = self.settings.models[model].monitoring
        layout = Layout.of(session.inputs, session.outputs, config.max_features)
        joined_in = {c.tensor: stack([batch[c.tensor] for batch in inputs]) for c in layout.inputs}
        names = {c.tensor for c in layout.outputs} | set(layout.classes)
        joined_out = {name: stack([batch[name] for batch in outputs]) for name in names}
        return Reference.build(
            source,
            ([c.name for c in layout.inputs], columns(joined_in, layout.inputs)),
            ([c.name for c in layout.outputs], columns(joined_out, layout.outputs)),
            {name: joined_out[name][:, 0].astype(np.int64) for name in layout.classes},
            config.bins,
        )

    async def pin_reference(self, model: str, rows: int | None = None) -> dict[str, Any]:
        """Pin a reference from this worker's last `rows` live rows (all it keeps: None)."""
        self._check(model)
        await self._fold_pending(time.time())
        recent = self._recent.get(model)
        if recent is None or recent.rows == 0:
            raise Conflict(f"model {model!r}: no live rows seen yet by this worker to pin from")
        reference = self._reference_from_recent(model, recent, rows or KEEP_ROWS)
        await self._store_reference(model, reference, replace=True)
        self._references[model] = reference
        return self.reference_info(model) or {}

    async def clear_reference(self, model: str) -> None:
        self._check(model)
        if self._redis is None:
            self._reference_file(model).unlink(missing_ok=True)
        else:
            await self._call(self._redis.delete(REFERENCE_KEY.format(model=model)))
        self._references.pop(model, None)

    def reference_info(self, model: str) -> dict[str, Any] | None:
        reference = self._references.get(model)
        if reference is None:
            return None
        return {"source": reference.source, "rows": reference.rows, "created": reference.created}

    async def _auto_pin(self, model: str) -> None:
        wanted = self.settings.models[model].monitoring.reference_from_live
        recent = self._recent.get(model)
        if not wanted or model in self._references or recent is None or recent.rows < wanted:
            return
        reference = self._reference_from_recent(model, recent, wanted, first=True)
        try:
            await self._store_reference(model, reference, replace=False)
            self._references[model] = await self._stored_reference(model) or reference
        except Unavailable as exc:
            log.warning("reference of %s not pinned yet: %s", model, exc)

    def _reference_from_recent(
        self, model: str, recent: _Recent, rows: int, first: bool = False
    ) -> Reference:
        chunks = list(recent.chunks)
        x = np.concatenate([chunk[0] for chunk in chunks])
        y = np.concatenate([chunk[1] for chunk in chunks])
        picked = slice(0, rows) if first else slice(max(0, x.shape[0] - rows), None)
        labels = {
            name: np.concatenate([chunk[2][name] for chunk in chunks])[picked]
            for name in chunks[0][2]
        }
        state = self._variant(model, recent.variant)
        assert state is not None
        config = self.settings.models[model].monitoring
        return Reference.build(
            f"live:{recent.variant}",
            ([c.name for c in state.layout.inputs], x[picked]),
            ([c.name for c in state.layout.outputs], y[picked]),
            labels,
            config.bins,
        )

    async def _stored_reference(self, model: str) -> Reference | None:
        client = self._redis
        if client is None:
            try:
                raw = self._reference_file(model).read_bytes()
            except FileNotFoundError:
                return None
        else:
            stored: Any = await self._call(client.get(REFERENCE_KEY.format(model=model)))
            if stored is None:
                return None
            raw = bytes(stored)
        return Reference.from_dict(orjson.loads(raw))

    async def _store_reference(self, model: str, reference: Reference, replace: bool) -> None:
        """Store it; `replace=False` keeps one another worker stored first."""
        data = orjson.dumps(reference.to_dict())
        client = self._redis
        if client is None:
            path = self._reference_file(model)
            if not replace and path.exists():
                return
            replace_file(path, data, durable=False)
        else:
            key = REFERENCE_KEY.format(model=model)
            await self._call(client.set(key, data, nx=not replace))

    def _reference_file(self, model: str) -> Path:
        return self.settings.data_dir / "monitor" / f"{model}.reference.json"

    async def _call(self, awaitable: Awaitable[T]) -> T:
        try:
            return await awaitable
        except redis_errors() as exc:
            raise Unavailable(f"Redis is unreachable: {exc}") from None

    # -- feedback ----------------------------------------------------------------------------

    async def feedback(self, model: str, items: list[Feedback]) -> dict[str, Any]:
        """Join ground truth with the kept predictions of every variant; score them."""
        self._check(model)
        await self._fold_pending(time.time())  # this worker's answers not folded yet join too
        variants = sorted(self.repository.variants(model))
        try:
            found = await self.feedback_store.take(
                model, [item.request_id for item in items], variants
            )
        except redis_errors() as exc:
            raise Unavailable(f"Redis is unreachable: {exc}") from None
        scores: Scores = {}
        results = []
        for item, answers in zip(items, found, strict=True):
            joined = []
            for variant, raw in answers.items():
                state = self._variant(model, variant)
                predicted = np.frombuffer(raw, dtype=np.float64)
                truth = item.truth if isinstance(item.truth, list) else [item.truth]
                if state is None or state.prediction is None or len(truth) != len(predicted):
                    continue
                _score(scores.setdefault(variant, {}), state.prediction, predicted, truth)
                joined.append(variant)
            outcome = "joined" if joined else "unmatched"
            results.append({"request_id": item.request_id, "outcome": outcome, "variants": joined})
        unmatched = sum(result["outcome"] == "unmatched" for result in results)
        if unmatched:
            scores[""] = {"unmatched": float(unmatched)}
        try:
            await self.feedback_store.add(model, scores)
        except redis_errors() as exc:
            raise Unavailable(f"Redis is unreachable, feedback not scored: {exc}") from None
        for variant, values in scores.items():
            if variant:
                self._metrics.feedback(model, variant, "joined", int(values["joined"]))
        if unmatched:
            self._metrics.feedback(model, "", "unmatched", unmatched)
        return {"joined": len(results) - unmatched, "unmatched": unmatched, "results": results}

    def _check(self, model: str) -> None:
        if model not in self.repository.models:
            raise NotFound(f"unknown model {model!r}")
        if model not in self._enabled:
            raise Conflict(f"model {model!r}: monitoring is off in the config")

    def _live_session(self, model: str) -> ModelSession:
        return self.repository.session(model, self._table.get(model).live)

    # -- reports and metrics -----------------------------------------------------------------

    async def report(self, model: str) -> dict[str, Any]:
        """The monitor's view of one model (README "Monitoring"), computed now: everything
        answered until this call, by every worker up to its last tick."""
        self._check(model)
        now = time.time()
        await self._fold_pending(now)
        return await self._refresh(model, now)

    def latest(self, model: str) -> tuple[Scores, dict[str, Any] | None]:
        """The feedback score sums (by variant) and the report of the last tick."""
        return self._scores.get(model, {}), self._reports.get(model)

    async def _report(self, model: str, merged: dict[str, tuple[Counts, Counts]]) -> dict[str, Any]:
        config = self.settings.models[model].monitoring
        reference = self._references.get(model)
        scores = self._scores.get(model, {})
        variants = {}
        for variant in sorted(self.repository.variants(model)):
            state = self._variant(model, variant)
            if state is None:
                continue
            inputs, outputs = merged.get(variant) or (
                Counts(state.inputs.names, state.inputs.bins),
                Counts(state.outputs.names, state.outputs.bins),
            )
            variants[variant] = {
                "rows": int(inputs.rows.max()) if inputs.rows.size else 0,
                "inputs": await _statistics("feature", inputs, reference, "inputs", config),
                "outputs": await _statistics("output", outputs, reference, "outputs", config),
                "classes": {
                    name: class_statistics(
                        outputs.classes.get(name, {}),
                        None if reference is None else reference.classes.get(name),
                    )
                    for name in state.layout.classes
                },
                "online": _online(state.prediction, scores.get(variant, {})),
            }
        return {
            "model": model,
            "window_s": config.window_s,
            "psi_threshold": config.psi_threshold,
            "reference": self.reference_info(model),
            "variants": variants,
            "feedback": {"unmatched": int(scores.get("", {}).get("unmatched", 0))},
        }

    def collect(self) -> Iterator[Metric]:
        """The gauges of the last tick (README "Monitoring"), the same in every worker."""
        families = _Gauges()
        for model, report in sorted(self._reports.items()):
            for variant, found in report["variants"].items():
                families.add(model, variant, found)
        yield from families.all()


async def _statistics(
    key: str, counts: Counts, reference: Reference | None, kind: str, config: MonitoringConfig
) -> list[dict[str, Any]]:
    """Each feature's statistics, back to the event loop every STATISTICS_CHUNK features."""
    rows = []
    for j, name in enumerate(counts.names):
        found = numeric_statistics(counts, j, _ref(reference, kind, name))
        rows.append(_row(key, name, found, config))
        if j % STATISTICS_CHUNK == STATISTICS_CHUNK - 1:
            await asyncio.sleep(0)
    return rows


def _ref(reference: Reference | None, kind: str, name: str) -> Any:
    return None if reference is None else getattr(reference, kind).get(name)


def _add(merged: dict[str, tuple[Counts, Counts]], variant: str, i: Counts, o: Counts) -> None:
    known = merged.get(variant)
    if known is None:
        merged[variant] = (i, o)
    elif known[0].names == i.names and known[1].names == o.names and known[0].bins == i.bins:
        known[0].merge(i)
        known[1].merge(o)
    # else: a worker still on another config (during a reload) is left out until it catches up


def _prediction(
    config: MonitoringConfig, session: ModelSession, layout: Layout
) -> Prediction | None:
    """What feedback on this variant is compared with (README "Monitoring": task)."""
    specs = session.output_specs
    if config.prediction_output is not None:
        spec = specs.get(config.prediction_output)
        if spec is None:
            return None  # a variant without that output is not scored
    elif config.task != "regression" and layout.classes:
        spec = specs[layout.classes[0]]
    else:
        spec = session.outputs[0]
    if config.task == "regression":
        return Prediction(spec.name, "value")
    if spec.dtype.kind in "iub":
        return Prediction(spec.name, "label")
    if config.task == "classification":
        return Prediction(spec.name, "argmax")
    return Prediction(spec.name, "value")


def _score(
    total: dict[str, float], prediction: Prediction, predicted: np.ndarray, truth: list[float]
) -> None:
    p, t = predicted, np.asarray(truth, dtype=np.float64)
    total["joined"] = total.get("joined", 0.0) + 1
    total["rows"] = total.get("rows", 0.0) + len(t)
    if prediction.task == "classification":
        total["correct"] = total.get("correct", 0.0) + float(np.sum(p == t))
    else:
        error = p - t
        total["absolute_error"] = total.get("absolute_error", 0.0) + float(np.abs(error).sum())
        total["squared_error"] = total.get("squared_error", 0.0) + float(np.square(error).sum())


def _online(prediction: Prediction | None, scores: dict[str, float]) -> dict[str, Any]:
    """Online metrics from summed scores: accuracy, or MAE and RMSE; None before feedback."""
    rows = scores.get("rows", 0.0)
    found: dict[str, Any] = {
        "task": None if prediction is None else prediction.task,
        "joined": int(scores.get("joined", 0)),
        "rows": int(rows),
    }
    if prediction is None:
        return found
    if prediction.task == "classification":
        found["accuracy"] = scores.get("correct", 0.0) / rows if rows else None
    else:
        found["mae"] = scores.get("absolute_error", 0.0) / rows if rows else None
        found["rmse"] = math.sqrt(scores.get("squared_error", 0.0) / rows) if rows else None
    return found


def _row(
    key: str, name: str, found: dict[str, float | None], config: MonitoringConfig
) -> dict[str, Any]:
    psi = found["psi"]
    return {key: name, **found, "drift": psi is not None and psi > config.psi_threshold}


class _Gauges:
    """The monitoring gauges of one scrape (README "Monitoring", metric table)."""

    def __init__(self) -> None:
        feature, output = ["model", "variant", "feature"], ["model", "variant", "output"]
        self.drift = GaugeMetricFamily(
            "gateway_feature_drift", "Input feature drift against the reference, by statistic.",
            labels=[*feature, "statistic"],
        )  # fmt: skip
        self.output_drift = GaugeMetricFamily(
            "gateway_output_drift", "Output drift against the reference, by statistic.",
            labels=[*output, "statistic"],
        )  # fmt: skip
        self.missing = GaugeMetricFamily(
            "gateway_feature_missing_ratio", "Share of NaN values of an input feature.",
            labels=feature,
        )  # fmt: skip
        self.out_of_range = GaugeMetricFamily(
            "gateway_feature_out_of_range_ratio",
            "Share of an input feature's values beyond the reference's range.", labels=feature,
        )  # fmt: skip
        self.class_ratio = GaugeMetricFamily(
            "gateway_output_class_ratio", "Share of each predicted class in the window.",
            labels=[*output, "class"],
        )  # fmt: skip
        self.rows = GaugeMetricFamily(
            "gateway_monitor_window_rows", "Rows in the monitoring window.",
            labels=["model", "variant"],
        )  # fmt: skip
        self.online = GaugeMetricFamily(
            "gateway_online_metric", "Online metric of a variant from feedback.",
            labels=["model", "variant", "metric"],
        )  # fmt: skip

    def add(self, model: str, variant: str, found: dict[str, Any]) -> None:
        self.rows.add_metric([model, variant], found["rows"])
        for row in found["inputs"]:
            labels = [model, variant, row["feature"]]
            _add_drift(self.drift, labels, row)
            _add_if_known(self.missing, labels, row["missing_ratio"])
            _add_if_known(self.out_of_range, labels, row["out_of_range_ratio"])
        for row in found["outputs"]:
            _add_drift(self.output_drift, [model, variant, row["output"]], row)
        for name, classes in found["classes"].items():
            _add_drift(self.output_drift, [model, variant, name], classes)
            for label, share in classes["shares"].items():
                self.class_ratio.add_metric([model, variant, name, label], share)
        for metric in ("accuracy", "mae", "rmse"):
            _add_if_known(self.online, [model, variant, metric], found["online"].get(metric))

    def all(self) -> list[Metric]:
        return [
            self.drift, self.output_drift, self.missing, self.out_of_range, self.class_ratio,
            self.rows, self.online,
        ]  # fmt: skip


def _add_drift(family: GaugeMetricFamily, labels: list[str], row: dict[str, Any]) -> None:
    for statistic in ("psi", "wasserstein"):
        _add_if_known(family, [*labels, statistic], row.get(statistic))


def _add_if_known(family: GaugeMetricFamily, labels: list[str], value: float | None) -> None:
    if value is not None:
        family.add_metric(labels, value)
