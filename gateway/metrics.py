"""Every Prometheus collector of the gateway, built in one place against a given registry.

CONTRACT §6. Labelled children are cached per label tuple so that recording a request costs two
dict lookups and two lock-protected adds. With several workers, prometheus-client's multiprocess
mode (PROMETHEUS_MULTIPROC_DIR set before any import of prometheus_client) sums counters and
histograms; routing gauges report the most recent value written by any worker.
"""

import os
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.multiprocess import MultiProcessCollector

from gateway.routing.state import RoutingState

# From 100 µs to 10 s (CONTRACT §6), about three buckets a decade.
BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip


class Metrics:
    """The gateway's collectors, and cheap recording methods for the request path."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.requests = Counter(
            "gateway_requests", "Inference requests answered, by HTTP status code.",
            ["model", "variant", "role", "code"], registry=registry,
        )  # fmt: skip
        self.request_duration = Histogram(
            "gateway_request_duration_seconds", "Whole request inside the gateway.",
            ["model", "variant", "role"], buckets=BUCKETS, registry=registry,
        )  # fmt: skip
        self.inference_duration = Histogram(
            "gateway_inference_duration_seconds", "The model run alone.",
            ["model", "variant"], buckets=BUCKETS, registry=registry,
        )  # fmt: skip
        self.shadow_records = Counter(
            "gateway_shadow_records", "Shadow records by outcome: logged, dropped or error.",
            ["model", "variant", "outcome"], registry=registry,
        )  # fmt: skip
        self.shadow_comparisons = Counter(
            "gateway_shadow_comparisons", "Shadow answers compared with live answers.",
            ["model", "variant", "agree"], registry=registry,
        )  # fmt: skip
        self.canary_weight = Gauge(
            "gateway_canary_weight", "Fraction of routed traffic sent to the canary.",
            ["model", "variant"], registry=registry, multiprocess_mode="mostrecent",
        )  # fmt: skip
        self.live_variant = Gauge(
            "gateway_live_variant", "1 for the variant that serves live traffic, 0 for others.",
            ["model", "variant"], registry=registry, multiprocess_mode="mostrecent",
        )  # fmt: skip
        self.routing_revision = Gauge(
            "gateway_routing_revision", "Routing revision in use.",
            ["model"], registry=registry, multiprocess_mode="mostrecent",
        )  # fmt: skip
        self.inflight = Gauge(
            "gateway_inflight_requests", "Inference requests being handled now.",
            registry=registry, multiprocess_mode="livesum",
        )  # fmt: skip
        self._request_children: dict[tuple[str, str, str, str], tuple[Counter, Histogram]] = {}
        self._inference_children: dict[tuple[str, str], Histogram] = {}

    def observe_request(
        self, model: str, variant: str, role: str, code: int, seconds: float
    ) -> None:
        """Count one answered inference request and its duration."""
        key = (model, variant, role, str(code))
        children = self._request_children.get(key)
        if children is None:
            children = (
                self.requests.labels(*key),
                self.request_duration.labels(model, variant, role),
            )
            self._request_children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def observe_inference(self, model: str, variant: str, seconds: float) -> None:
        """Record how long one model run took."""
        key = (model, variant)
        child = self._inference_children.get(key)
        if child is None:
            child = self._inference_children[key] = self.inference_duration.labels(*key)
        child.observe(seconds)

    def shadow_record(self, model: str, variant: str, outcome: str) -> None:
        self.shadow_records.labels(model, variant, outcome).inc()

    def shadow_comparison(self, model: str, variant: str, agree: bool) -> None:
        self.shadow_comparisons.labels(model, variant, "true" if agree else "false").inc()

    def set_routing(self, model: str, state: RoutingState, variants: Iterable[str]) -> None:
        """Publish one model's routing: revision, live variant and canary weight per variant."""
        self.routing_revision.labels(model).set(state.revision)
        canary = state.canary
        for variant in variants:
            self.live_variant.labels(model, variant).set(1 if variant == state.live else 0)
            weight = canary.weight if canary and canary.variant == variant else 0.0
            self.canary_weight.labels(model, variant).set(weight)


def exposition_registry(own: CollectorRegistry) -> CollectorRegistry:
    """The registry /metrics reads: across all workers in multiprocess mode, else our own."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not directory:
        return own
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
    return registry
