"""OpenTelemetry traces of inference requests, HTTP and gRPC alike (README "Tracing").

Each request is one server span with four children, in the order its time is spent:

    POST /v2/models/{model}/infer       (gRPC: inference.GRPCInferenceService/ModelInfer)
    ├── decode   the body or message into tensors
    ├── queue    waiting for a runner thread (and batch-mates), ~0 for a run on the event loop
    ├── run      the onnxruntime run that answered it (a batch's, when batched)
    └── encode   the answer

The server span carries OpenTelemetry's semantic conventions for its transport (`http.*` and
`url.path`; `rpc.system.name`, `rpc.method`, `rpc.response.status_code`) and the gateway's own
attributes `gateway.model`, `gateway.variant`, `gateway.role`, `gateway.revision` and
`gateway.request_id`. A W3C `traceparent` (and `tracestate`) header or gRPC metadata entry makes
the span a child of the caller's. The status is ERROR for answers of 500 and above (HTTP) and
their gRPC codes (INTERNAL, UNAVAILABLE, DEADLINE_EXCEEDED), as the conventions say.

Off unless `otel_endpoint` is set: nothing here imports OpenTelemetry until then, and a request
pays only for its transport's `if trace is not None` tests (docs/benchmarks-grpc.md). On, a
request takes marks (`time.perf_counter()`) as it goes and its spans are made with those times
when it ends; the SDK's BatchSpanProcessor exports them over OTLP/gRPC from its
own thread. The sampler is the SDK's default (parent-based, always on), which OpenTelemetry's
`OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG` change; `OTEL_SERVICE_NAME` and
`OTEL_RESOURCE_ATTRIBUTES` name the service (default `model-gateway`).
"""

import importlib.util
import threading
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from gateway import __version__
from gateway.errors import ConfigError

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Span, Tracer

    from gateway.routing import Route

SERVICE_NAME = "model-gateway"
TRACE_HEADERS = (b"traceparent", b"tracestate")  # W3C Trace Context
FLUSH_S = 2.0  # at shutdown, for the spans still buffered to be exported


def check_tracing_installed() -> None:
    """ConfigError when `otel_endpoint` is set but the `otel` extra is not installed."""
    try:
        found = all(importlib.util.find_spec(module) for module in _EXTRA_MODULES)
    except ModuleNotFoundError:  # a parent package is missing
        found = False
    if not found:
        raise ConfigError(
            "otel_endpoint: tracing needs OpenTelemetry's SDK and OTLP exporter; "
            "pip install 'model-gateway[otel]'"
        )


_EXTRA_MODULES = ("opentelemetry.sdk.trace", "opentelemetry.exporter.otlp.proto.grpc")


class Tracing:
    """Starts one RequestTrace per request; its spans go to `provider`'s processors."""

    def __init__(self, provider: "TracerProvider", exporter: "SpanExporter | None" = None) -> None:
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self.provider = provider
        self._exporter = exporter  # stopped at shutdown after FLUSH_S, when given
        self._tracer = provider.get_tracer("gateway", __version__)
        self._propagator = TraceContextTextMapPropagator()

    @classmethod
    def exporting_to(cls, endpoint: str) -> "Tracing":
        """Spans batched and sent over OTLP/gRPC to `endpoint` (`http://collector:4317`)."""
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        resource = Resource.create()  # OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES
        if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
            resource = resource.merge(Resource({"service.name": SERVICE_NAME}))
        provider = TracerProvider(resource=resource)
        exporter = OTLPSpanExporter(endpoint=endpoint)
        provider.add_span_processor(BatchSpanProcessor(exporter))
        return cls(provider, exporter)

    def begin(
        self,
        name: str,
        headers: Mapping[bytes, bytes],
        attributes: dict[str, Any],
        started: float,
    ) -> "RequestTrace | None":
        """The trace of a request that arrived at `started` (`time.perf_counter()`), a child of
        the caller's W3C trace context in `headers` (names in lower case); None when the sampler
        drops it, so the request does no more tracing work."""
        from opentelemetry.trace import SpanKind

        carrier = {
            key.decode(): value.decode("latin-1")
            for key in TRACE_HEADERS
            if (value := headers.get(key)) is not None
        }
        parent = self._propagator.extract(carrier) if carrier else None
        epoch_ns = time.time_ns() - round(time.perf_counter() * 1e9)  # perf_counter -> epoch
        span = self._tracer.start_span(
            name,
            context=parent,
            kind=SpanKind.SERVER,
            attributes=attributes,
            start_time=epoch_ns + round(started * 1e9),
        )
        if not span.is_recording():
            return None
        return RequestTrace(self._tracer, span, epoch_ns, started)

    def shutdown(self) -> None:
        """Export what is still buffered for up to FLUSH_S, then stop. What a collector that is
        down has not taken by then is dropped: its exporter would retry each batch for 10 s,
        holding SIGTERM's exit past Kubernetes' grace period (README "Graceful shutdown")."""
        # On a thread of its own: the SDK's force_flush ignores its timeout and exports every
        # batch, each with the exporter's retries (opentelemetry-python issue 4568).
        flushing = threading.Thread(
            target=self.provider.force_flush, name="gateway-trace-flush", daemon=True
        )
        flushing.start()
        flushing.join(FLUSH_S)
        if self._exporter is not None:
            self._exporter.shutdown()  # an export retrying gives up, the next ones fail at once
        self.provider.shutdown()


class RequestTrace:
    """One request's server span, and the marks its child spans are made from when it ends."""

    __slots__ = ("_epoch_ns", "_mark", "_span", "_steps", "_tracer")

    def __init__(self, tracer: "Tracer", span: "Span", epoch_ns: int, started: float) -> None:
        self._tracer = tracer
        self._span = span
        self._epoch_ns = epoch_ns
        self._mark = started
        self._steps: list[tuple[str, float, float]] = []

    def mark(self) -> None:
        """A step starts now."""
        self._mark = time.perf_counter()

    def step(self, name: str) -> None:
        """The step begun at the last mark (`decode`, `encode`) ends now."""
        now = time.perf_counter()
        self._steps.append((name, self._mark, now))
        self._mark = now

    def ran(self, run_seconds: float) -> None:
        """The model run of `run_seconds` just ended: the time from the last mark to its start
        was spent waiting (`queue`)."""
        now = time.perf_counter()
        run_started = max(self._mark, now - run_seconds)
        self._steps += [("queue", self._mark, run_started), ("run", run_started, now)]
        self._mark = now

    def finish(self, attributes: dict[str, Any], route: "Route | None", failed: str | None) -> None:
        """End the request now: `attributes` of its answer, the route it took (None: refused
        before routing), `failed`: the error type when the answer is an error (500 and above)."""
        from opentelemetry.trace import Status, StatusCode, set_span_in_context

        span = self._span
        if route is not None:
            attributes |= {
                "gateway.variant": route.variant,
                "gateway.role": route.role,
                "gateway.revision": route.revision,
            }
        if failed is not None:
            attributes["error.type"] = failed
            span.set_status(Status(StatusCode.ERROR))
        span.set_attributes(attributes)
        context: Context = set_span_in_context(span)
        epoch_ns = self._epoch_ns
        for name, start, end in self._steps:
            child = self._tracer.start_span(
                name, context=context, start_time=epoch_ns + round(start * 1e9)
            )
            child.end(end_time=epoch_ns + round(end * 1e9))
        span.end(end_time=epoch_ns + round(time.perf_counter() * 1e9))
