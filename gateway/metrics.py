"""The gateway's Prometheus metrics (CONTRACT §6): recorded in plain Python, exposed as a collector.

prometheus-client's own Counter and Histogram take a lock and walk the buckets in Python on every
observation: about 70 Python lines and 7 µs a request, a tenth of a small model's request. Here a
request costs a dict lookup, a bisect and a few adds. Every recording method runs on the event
loop's thread (the request path, the shadow log and the routing watch all live there), so no lock
is needed. prometheus-client still writes the exposition format: `Metrics` is a collector of the
registry /metrics reads, and builds its metric families at scrape time.

With several workers (`METRICS_DIR_ENV` names a fresh directory per run), every worker writes its
counters and histograms to `<dir>/<pid>.json` each second and when it stops; /metrics adds the
other workers' files to its own live values. Counters and histograms are sums over all workers,
the others' part at most a second old; a stopped worker's counts stay in the sum, so counters
never go down. The in-flight gauge sums the workers still running. Routing gauges are the
scraping worker's own: every worker follows the same routing, so that is the current value.
"""

import contextlib
import os
from bisect import bisect_left
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import NamedTuple

import orjson
from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.utils import floatToGoString

from gateway.routing.state import RoutingState

METRICS_DIR_ENV = "GATEWAY_METRICS_DIR"

# From 100 µs to 10 s (CONTRACT §6), about three buckets a decade.
BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
_LE = [*map(floatToGoString, BUCKETS), "+Inf"]

Labels = tuple[str, ...]
Series = dict[Labels, list[float]]


class Peer(NamedTuple):
    """Another worker's counts, as it last wrote them."""

    pid: int
    inflight: int
    series: dict[str, Series]  # family name -> its series


class Family:
    """One counter or histogram: a list of numbers per label tuple.

    A counter's list is [value]; a histogram's is one count per bucket (the last is +Inf, counted
    apart, not cumulative) followed by the sum of the observations.
    """

    def __init__(self, name: str, documentation: str, labels: list[str], histogram: bool) -> None:
        self.name = name
        self.documentation = documentation
        self.labels = labels
        self.histogram = histogram
        self.series: Series = {}

    def inc(self, labels: Labels) -> None:
        series = self.series.get(labels)
        if series is None:
            series = self.series[labels] = [0.0]
        series[0] += 1

    def observe(self, labels: Labels, value: float) -> None:
        series = self.series.get(labels)
        if series is None:
            series = self.series[labels] = [0.0] * (len(BUCKETS) + 2)
        series[bisect_left(BUCKETS, value)] += 1  # the first bucket whose bound is >= value
        series[-1] += value

    def metric(self, others: Iterable[Series]) -> Metric:
        """This family as prometheus-client exposes it, with other workers' series added."""
        total = {labels: list(values) for labels, values in self.series.items()}
        for series in others:
            for labels, values in series.items():
                mine = total.setdefault(labels, [0.0] * len(values))
                for i, value in enumerate(values):
                    mine[i] += value
        if not self.histogram:
            counter = CounterMetricFamily(self.name, self.documentation, labels=self.labels)
            for labels, (value,) in total.items():
                counter.add_metric(labels, value)
            return counter
        histogram = HistogramMetricFamily(self.name, self.documentation, labels=self.labels)
        for labels, values in total.items():
            cumulative, buckets = 0.0, []
            for le, count in zip(_LE, values[:-1], strict=True):
                cumulative += count
                buckets.append((le, cumulative))
            histogram.add_metric(labels, buckets, sum_value=values[-1])
        return histogram


class Metrics:
    """The gateway's metrics, cheap recording methods for the request path, and their collector."""

    def __init__(self, registry: CollectorRegistry, directory: str | None = None) -> None:
        self.registry = registry
        self.requests = Family(
            "gateway_requests", "Inference requests answered, by HTTP status code.",
            ["model", "variant", "role", "code"], histogram=False,
        )  # fmt: skip
        self.request_duration = Family(
            "gateway_request_duration_seconds", "Whole request inside the gateway.",
            ["model", "variant", "role"], histogram=True,
        )  # fmt: skip
        self.inference_duration = Family(
            "gateway_inference_duration_seconds", "The model run alone.",
            ["model", "variant"], histogram=True,
        )  # fmt: skip
        self.shadow_records = Family(
            "gateway_shadow_records", "Shadow records by outcome: logged, dropped or error.",
            ["model", "variant", "outcome"], histogram=False,
        )  # fmt: skip
        self.shadow_comparisons = Family(
            "gateway_shadow_comparisons", "Shadow answers compared with live answers.",
            ["model", "variant", "agree"], histogram=False,
        )  # fmt: skip
        self.families = [
            self.requests, self.request_duration, self.inference_duration,
            self.shadow_records, self.shadow_comparisons,
        ]  # fmt: skip
        self.inflight = 0  # inference requests being handled now
        self._routing: dict[str, tuple[RoutingState, list[str]]] = {}
        self._directory = None if directory is None else Path(directory)
        registry.register(self)  # a collector needs only collect()

    def observe_request(
        self, model: str, variant: str, role: str, code: int, seconds: float
    ) -> None:
        """Count one answered inference request and its duration."""
        self.requests.inc((model, variant, role, str(code)))
        self.request_duration.observe((model, variant, role), seconds)

    def observe_inference(self, model: str, variant: str, seconds: float) -> None:
        """Record how long one model run took."""
        self.inference_duration.observe((model, variant), seconds)

    def shadow_record(self, model: str, variant: str, outcome: str) -> None:
        self.shadow_records.inc((model, variant, outcome))

    def shadow_comparison(self, model: str, variant: str, agree: bool) -> None:
        self.shadow_comparisons.inc((model, variant, "true" if agree else "false"))

    def set_routing(self, model: str, state: RoutingState, variants: Iterable[str]) -> None:
        """Publish one model's routing: revision, live variant and canary weight per variant."""
        self._routing[model] = (state, list(variants))

    def collect(self) -> Iterator[Metric]:
        """Every family, summed over workers; called by the registry at each scrape."""
        peers = self._peers()
        for family in self.families:
            yield family.metric(peer.series.get(family.name, {}) for peer in peers)
        yield from self._routing_gauges()
        inflight = GaugeMetricFamily(
            "gateway_inflight_requests", "Inference requests being handled now."
        )
        inflight.add_metric([], self.inflight + sum(p.inflight for p in peers if _running(p.pid)))
        yield inflight

    @property
    def shared(self) -> bool:
        """Whether this worker shares its metrics with other workers."""
        return self._directory is not None

    def write_snapshot(self) -> None:
        """Write this worker's counts where the other workers' /metrics read them."""
        if self._directory is None:
            return
        snapshot = {
            "pid": os.getpid(),
            "inflight": self.inflight,
            "series": {f.name: [[*labels, values] for labels, values in f.series.items()]
                       for f in self.families},
        }  # fmt: skip
        path = self._directory / f"{os.getpid()}.json"
        temporary = path.with_suffix(".tmp")
        temporary.write_bytes(orjson.dumps(snapshot))
        temporary.replace(path)  # atomic: a reader sees the old file or the new one

    def _peers(self) -> list[Peer]:
        if self._directory is None:
            return []
        peers = []
        for path in self._directory.glob("*.json"):
            if path.stem == str(os.getpid()):
                continue  # our own live values are newer than our file
            with contextlib.suppress(OSError, ValueError, KeyError):  # not a worker's snapshot
                snapshot = orjson.loads(path.read_bytes())
                series = {
                    name: {tuple(row[:-1]): row[-1] for row in rows}
                    for name, rows in snapshot["series"].items()
                }
                peers.append(Peer(snapshot["pid"], snapshot["inflight"], series))
        return peers

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


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    return True
