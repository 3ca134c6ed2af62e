"""The gateway's Prometheus metrics (README, "Metrics and logs"), recorded in shared memory.

prometheus-client's own Counter and Histogram take a lock and walk the buckets in Python on every
observation: about 70 Python lines and 7 µs a request, a tenth of a small model's request. Here a
request costs a dict lookup, a bisect and a few adds into slots of doubles that live in shared
memory (`gateway.metric_values`). Every recording method runs on the event loop's thread (the
request path, the shadow log and the routing watch all live there), so no lock is needed.
prometheus-client still writes the exposition format: `Metrics` is a collector of the registry
/metrics reads, and builds its metric families at scrape time.

With several workers (`METRICS_DIR_ENV` names a fresh directory per run), a scrape adds up every
worker's slots as they are at that moment, dead workers' included: the sum is exact, and a
counter never goes down, whichever worker answers. The in-flight gauge sums the workers still
running; `gateway_routing_stale` is 1 while any running worker serves routing that Redis has not
confirmed. Routing gauges are the scraping worker's own: every worker follows the same routing,
so that is the current value.
"""

import logging
import os
from bisect import bisect_left
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from time import time
from typing import NamedTuple

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.utils import floatToGoString

from gateway.metric_values import Labels, PeerValues, Slot, WorkerValues, find_peers, running
from gateway.routing.state import RoutingState

log = logging.getLogger(__name__)

METRICS_DIR_ENV = "GATEWAY_METRICS_DIR"
INFLIGHT, STALE = 0, 1  # a worker's gauges (gateway.metric_values.GAUGES), by index

# From 100 µs to 10 s (README, "Metrics and logs"), about three buckets a decade.
BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
# Rows of a batch run (Triton's batch size): powers of two up to the largest max_batch_size.
BATCH_BUCKETS = tuple(float(2**n) for n in range(17))
# Finer buckets that /metrics does not show, for comparing two variants' latency (a rollout's
# analysis): ten a decade from 10 µs to 100 s, so a quantile is known within about 12%.
FINE_BUCKETS: tuple[float, ...] = tuple(10.0 ** (n / 10) for n in range(-50, 21))
FINE = len(FINE_BUCKETS) + 1  # counts per fine histogram (+Inf last)
# A histogram's slot: one count per bucket (+Inf last), then the sum of the observations. The
# model-run histogram's slot goes on with what Triton's statistics read and /metrics does not:
# the batch rows run, the fine buckets, and when the last run ended (seconds since the epoch).
_SUM = len(BUCKETS) + 1
_ROWS = _SUM + 1
_FINE = _ROWS + 1
_LAST = _FINE + FINE

Totals = dict[Labels, list[float]]


class Family:
    """One counter or histogram: a slot of doubles per label tuple, in shared memory.

    A counter's slot starts with its value, a histogram's with its buckets and sum (`_SUM`);
    `extra` columns may follow, not exported. Workers' slots add up, except the `latest` last
    columns, whose maximum is kept.
    """

    def __init__(
        self,
        values: WorkerValues,
        name: str,
        documentation: str,
        labels: list[str],
        histogram: bool,
        extra: int = 0,
        latest: int = 0,
        buckets: tuple[float, ...] = BUCKETS,
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labels = labels
        self.histogram = histogram
        self.buckets = buckets
        self._le = [*map(floatToGoString, buckets), "+Inf"]
        self._sum = len(buckets) + 1
        self.width = (self._sum + 1 if histogram else 1) + extra
        self._added = self.width - latest  # columns before this one add up
        self._values = values
        self.series: dict[Labels, Slot] = {}

    def slot(self, labels: Labels) -> Slot:
        """The slot of `labels`, made (all zeros) on first use."""
        series = self.series.get(labels)
        if series is None:
            series = self.series[labels] = self._values.slot(self.name, labels, self.width)
        return series

    def inc(self, labels: Labels) -> None:
        series = self.series.get(labels)
        if series is None:
            series = self.slot(labels)
        series[0] += 1

    def observe(self, labels: Labels, value: float) -> None:
        series = self.series.get(labels)
        if series is None:
            series = self.slot(labels)
        series[bisect_left(self.buckets, value)] += 1  # the first bucket whose bound is >= value
        series[self._sum] += value

    def mine(self) -> Totals:
        """This worker's values."""
        return {labels: list(series) for labels, series in self.series.items()}

    def merge(self, totals: Totals, labels: Labels, values: Sequence[float]) -> None:
        """Add another worker's values of one series to `totals`."""
        values = [*values[: self.width], *[0.0] * (self.width - len(values))]
        total = totals.setdefault(labels, [0.0] * self.width)
        for i, value in enumerate(values):
            total[i] = total[i] + value if i < self._added else max(total[i], value)

    def metric(self, totals: Totals) -> Metric:
        """This family as prometheus-client exposes it."""
        if not self.histogram:
            counter = CounterMetricFamily(self.name, self.documentation, labels=self.labels)
            for labels, values in totals.items():
                counter.add_metric(labels, values[0])
            return counter
        histogram = HistogramMetricFamily(self.name, self.documentation, labels=self.labels)
        for labels, values in totals.items():
            cumulative, buckets = 0.0, []
            for le, count in zip(self._le, values[: self._sum], strict=True):
                cumulative += count
                buckets.append((le, cumulative))
            histogram.add_metric(labels, buckets, sum_value=values[self._sum])
        return histogram


class VariantStats(NamedTuple):
    """One variant's answers and model runs, summed over workers (for Triton's statistics)."""

    success: int = 0  # answers with status 200
    success_seconds: float = 0.0
    fail: int = 0  # answers with any other status
    fail_seconds: float = 0.0
    runs: int = 0  # model runs for callers (shadow runs are not counted)
    run_seconds: float = 0.0
    rows: int = 0  # batch rows of those runs
    last_run: float = 0.0  # when the last run ended, seconds since the epoch; 0: never


class Metrics:
    """The gateway's metrics, cheap recording methods for the request path, and their collector."""

    def __init__(self, registry: CollectorRegistry, directory: str | None = None) -> None:
        self.registry = registry
        self._run_directory = None if directory is None else Path(directory)
        values = self._values = WorkerValues(self._run_directory)
        self.requests = Family(
            values, "gateway_requests", "Inference requests answered, by HTTP status code.",
            ["model", "variant", "role", "code"], histogram=False,
            extra=1,  # the answers' total duration, for Triton's success and fail statistics
        )  # fmt: skip
        self.request_duration = Family(
            values, "gateway_request_duration_seconds", "Whole request inside the gateway.",
            ["model", "variant", "role"], histogram=True,
        )  # fmt: skip
        self.inference_duration = Family(
            values, "gateway_inference_duration_seconds", "The model run alone.",
            ["model", "variant"], histogram=True, extra=2 + FINE, latest=1,  # _ROWS.._LAST
        )  # fmt: skip
        self.shadow_records = Family(
            values, "gateway_shadow_records",
            "Shadow records by outcome: logged, dropped or error.",
            ["model", "variant", "outcome"], histogram=False,
        )  # fmt: skip
        self.shadow_comparisons = Family(
            values, "gateway_shadow_comparisons", "Shadow answers compared with live answers.",
            ["model", "variant", "agree"], histogram=False,
        )  # fmt: skip
        self.feedback_counts = Family(
            values, "gateway_feedback",
            "Feedback items by outcome: joined with a variant's answer, or unmatched.",
            ["model", "variant", "outcome"], histogram=False,
        )  # fmt: skip
        self.monitor_drops = Family(
            values, "gateway_monitor_dropped",
            "Answers not monitored: more were waiting than the monitor holds.",
            ["model"], histogram=False,
        )  # fmt: skip
        self.rollout_decisions = Family(
            values, "gateway_rollout_decisions",
            "Rollout decisions: advance, wait, pause, rollback, promote, and the operator's.",
            ["model", "decision"], histogram=False,
        )  # fmt: skip
        self.batch_size = Family(
            values, "gateway_batch_size", "Rows of each model run for callers (dynamic batching).",
            ["model", "variant"], histogram=True, buckets=BATCH_BUCKETS,
        )  # fmt: skip
        self.queue_duration = Family(
            values, "gateway_queue_seconds", "Time a request waited in its variant's queue.",
            ["model", "variant"], histogram=True,
        )  # fmt: skip
        self.rejected_requests = Family(
            values, "gateway_rejected_requests",
            "Requests answered at once without a run: queue_full (429) or deadline (504).",
            ["model", "variant", "reason"], histogram=False,
        )  # fmt: skip
        self.families = [
            self.requests, self.request_duration, self.inference_duration,
            self.shadow_records, self.shadow_comparisons, self.feedback_counts,
            self.monitor_drops, self.rollout_decisions, self.batch_size, self.queue_duration,
            self.rejected_requests,
        ]  # fmt: skip
        # Shared like the others, not exported: what a rollout's analysis reads besides them.
        self.model_failures = Family(
            values, "model_failures", "Model runs that failed on inputs the model declares.",
            ["model", "variant", "role"], histogram=False,
        )  # fmt: skip
        self.shadow_latency = Family(
            values, "shadow_latency", "Fine histograms of shadow runs and their live runs.",
            ["model", "variant", "side"], histogram=False, extra=FINE - 1,
        )  # fmt: skip
        self._shared = [*self.families, self.model_failures, self.shadow_latency]
        self.gauges = values.gauges  # this worker's: [INFLIGHT] requests, [STALE] routing
        # observe_request's slots by its own arguments: one lookup, no label strings to build.
        self._request_slots: dict[tuple[str, str, str, int], tuple[Slot, Slot]] = {}
        self._peers: dict[str, PeerValues] = {}
        self._routing: dict[str, tuple[RoutingState, list[str]]] = {}
        registry.register(self)  # a collector needs only collect()

    @property
    def inflight(self) -> float:
        """Inference requests this worker is handling now."""
        return self.gauges[INFLIGHT]

    @inflight.setter
    def inflight(self, value: float) -> None:
        self.gauges[INFLIGHT] = value

    @property
    def routing_stale(self) -> bool:
        """Whether this worker serves last-known routing it could not confirm with Redis."""
        return self.gauges[STALE] != 0.0

    @routing_stale.setter
    def routing_stale(self, stale: bool) -> None:
        self.gauges[STALE] = 1.0 if stale else 0.0

    def observe_request(
        self, model: str, variant: str, role: str, code: int, seconds: float
    ) -> None:
        """Count one answered inference request and its duration."""
        slots = self._request_slots.get((model, variant, role, code))
        if slots is None:
            slots = self._request_slots[(model, variant, role, code)] = (
                self.requests.slot((model, variant, role, str(code))),
                self.request_duration.slot((model, variant, role)),
            )
        count, duration = slots
        count[0] += 1
        count[1] += seconds
        duration[bisect_left(BUCKETS, seconds)] += 1
        duration[_SUM] += seconds

    def observe_inference(self, model: str, variant: str, seconds: float, rows: int = 1) -> None:
        """Record one model run for a caller: how long it took, and its batch rows."""
        series = self.inference_duration.series.get((model, variant))
        if series is None:
            series = self.inference_duration.slot((model, variant))
        series[bisect_left(BUCKETS, seconds)] += 1
        series[_SUM] += seconds
        series[_ROWS] += rows
        series[_FINE + bisect_left(FINE_BUCKETS, seconds)] += 1
        series[_LAST] = time()

    def observe_batch(self, model: str, variant: str, rows: int) -> None:
        """One model run of a variant's queue, with its rows (README "Batching and admission")."""
        self.batch_size.observe((model, variant), rows)

    def observe_queue(self, model: str, variant: str, seconds: float) -> None:
        self.queue_duration.observe((model, variant), seconds)

    def rejected(self, model: str, variant: str, reason: str) -> None:
        self.rejected_requests.inc((model, variant, reason))

    def shadow_record(self, model: str, variant: str, outcome: str) -> None:
        self.shadow_records.inc((model, variant, outcome))

    def shadow_comparison(self, model: str, variant: str, agree: bool) -> None:
        self.shadow_comparisons.inc((model, variant, "true" if agree else "false"))

    def shadow_run(self, model: str, variant: str, seconds: float, live_seconds: float) -> None:
        """A shadow run's duration and its live run's, for comparing their latency."""
        for side, value in (("shadow", seconds), ("live", live_seconds)):
            self.shadow_latency.slot((model, variant, side))[bisect_left(FINE_BUCKETS, value)] += 1

    def model_failure(self, model: str, variant: str, role: str) -> None:
        """A run the model refused (answered 400 like Triton; a rollout counts it an error)."""
        self.model_failures.inc((model, variant, role))

    def rollout_decision(self, model: str, decision: str) -> None:
        self.rollout_decisions.inc((model, decision))

    def feedback(self, model: str, variant: str, outcome: str, count: int) -> None:
        """Count feedback items; unmatched ones have no variant ("")."""
        self.feedback_counts.slot((model, variant, outcome))[0] += count

    def monitor_dropped(self, model: str) -> None:
        self.monitor_drops.inc((model,))

    def add_counter(self, name: str, documentation: str, labels: list[str]) -> Family:
        """Another exported counter, recorded and summed over workers like the ones above (a
        transport's own: the stream consumers', gateway.streams)."""
        family = Family(self._values, name, documentation, labels, histogram=False)
        self.families.append(family)
        self._shared.append(family)
        return family

    def set_routing(self, model: str, state: RoutingState, variants: Iterable[str]) -> None:
        """Publish one model's routing: revision, live variant and canary weight per variant."""
        self._routing[model] = (state, list(variants))

    def collect(self) -> Iterator[Metric]:
        """Every family, summed over workers; called by the registry at each scrape."""
        peers = self._read_peers()
        totals = self._totals(peers)
        for family in self.families:
            yield family.metric(totals[family.name])
        yield from self._routing_gauges()
        gauges = [peer.gauges() for peer in _running(peers)]
        inflight = GaugeMetricFamily(
            "gateway_inflight_requests", "Inference requests being handled now."
        )
        inflight.add_metric([], self.inflight + sum(inflight for inflight, _ in gauges))
        yield inflight
        stale = GaugeMetricFamily(
            "gateway_routing_stale",
            "1 while a worker serves last-known routing it could not confirm with Redis.",
        )
        stale.add_metric([], 1 if self.routing_stale or any(s for _, s in gauges) else 0)
        yield stale

    def variant_stats(self) -> dict[tuple[str, str], VariantStats]:
        """Answers and model runs by (model, variant), summed over workers, dead ones included."""
        totals = self._totals(self._read_peers())
        stats: dict[tuple[str, str], VariantStats] = {}
        for (model, variant, _, code), (count, seconds) in totals[self.requests.name].items():
            old = stats.get((model, variant), VariantStats())
            if code == "200":
                new = old._replace(success=old.success + int(count),
                                   success_seconds=old.success_seconds + seconds)  # fmt: skip
            else:
                new = old._replace(fail=old.fail + int(count),
                                   fail_seconds=old.fail_seconds + seconds)  # fmt: skip
            stats[(model, variant)] = new
        for (model, variant), values in totals[self.inference_duration.name].items():
            stats[(model, variant)] = stats.get((model, variant), VariantStats())._replace(
                runs=int(sum(values[:_SUM])), run_seconds=values[_SUM],
                rows=int(values[_ROWS]), last_run=values[_LAST],
            )  # fmt: skip
        return stats

    def _read_peers(self) -> list[PeerValues]:
        if self._run_directory is None:
            return []
        try:
            find_peers(self._run_directory, self._peers, self._values.directory)
        except OSError as exc:  # the run directory is gone: the server is stopping
            log.warning("cannot list the other workers' metrics: %s", exc)
        return list(self._peers.values())

    def _totals(self, peers: list[PeerValues]) -> dict[str, Totals]:
        totals = {family.name: family.mine() for family in self._shared}
        families = {family.name: family for family in self._shared}
        for peer in peers:
            try:
                for name, labels, values in peer.series():
                    family = families.get(name)
                    if family is not None:
                        family.merge(totals[name], labels, values)
            except (OSError, ValueError) as exc:
                log.warning("cannot read the metrics of worker %d: %s", peer.pid, exc)
        return totals

    def _routing_gauges(self) -> Iterator[Metric]:
        labels = ["model", "variant"]
        revision = GaugeMetricFamily(
            "gateway_routing_revision", "Routing revision in use.", labels=["model"]
        )
        live = GaugeMetricFamily(
            "gateway_live_variant",
            "1 for the variant that serves live traffic, 0 for others.",
            labels=labels,
        )
        weight = GaugeMetricFamily(
            "gateway_canary_weight", "Fraction of routed traffic sent to the canary.", labels=labels
        )
        for model, (state, variants) in self._routing.items():
            revision.add_metric([model], state.revision)
            canary = state.canary
            for variant in variants:
                live.add_metric([model, variant], 1 if variant == state.live else 0)
                share = canary.weight if canary and canary.variant == variant else 0.0
                weight.add_metric([model, variant], share)
        yield from (weight, live, revision)


def fine_runs(values: Sequence[float]) -> Sequence[float]:
    """The fine bucket counts (FINE_BUCKETS, +Inf last) of a model-run histogram's slot."""
    return values[_FINE:_LAST]


def _running(peers: list[PeerValues]) -> list[PeerValues]:
    """The peers still running: of the directories of one pid, only the newest can be."""
    newest: dict[int, PeerValues] = {}
    for peer in peers:
        if peer.pid not in newest or peer.generation > newest[peer.pid].generation:
            newest[peer.pid] = peer
    return [peer for pid, peer in newest.items() if pid != os.getpid() and running(pid)]
