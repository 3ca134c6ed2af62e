"""OpenTelemetry traces of inference requests (README "Tracing"), HTTP and gRPC, in-process:
spans collected with the SDK's in-memory exporter, and once exported over OTLP/gRPC to a
receiver the test runs."""

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as otlp
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc as otlp_grpc
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client import CollectorRegistry
from support import ROOT, free_port, iris_body
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from gateway.http import create_app
from gateway.settings import load_settings
from gateway.tracing import FLUSH_S, Tracing

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT_ID = "b7ad6b7169203331"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"
STEPS = ["decode", "queue", "run", "encode"]


class Traced:
    """An app with gRPC on and spans kept in memory, and clients of both transports."""

    def __init__(self, http: httpx.AsyncClient, target: str, exporter: InMemorySpanExporter):
        self.http = http
        self.target = target
        self.exporter = exporter

    def trees(self) -> list[tuple[ReadableSpan, list[ReadableSpan]]]:
        """Each server span with its children, oldest first; the spans are then forgotten."""
        spans = self.exporter.get_finished_spans()
        self.exporter.clear()
        roots = [span for span in spans if span.kind == SpanKind.SERVER]
        return [
            (root, [s for s in spans if s.parent and s.parent.span_id == root.context.span_id])
            for root in sorted(roots, key=lambda span: span.start_time or 0)
        ]


@pytest.fixture
async def traced(write_config: Callable[..., Path]) -> AsyncIterator[Traced]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    port = free_port()
    settings = load_settings(write_config(grpc_port=port), env={})
    app = create_app(settings, registry=CollectorRegistry(), tracing=Tracing(provider))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            yield Traced(client, f"127.0.0.1:{port}", exporter)


def check_tree(root: ReadableSpan, children: list[ReadableSpan]) -> None:
    """Four steps in order, each inside the request's span and after the one before."""
    assert [child.name for child in children] == STEPS
    assert root.start_time is not None and root.end_time is not None
    previous_end = root.start_time
    for child in children:
        assert child.start_time is not None and child.end_time is not None
        assert previous_end <= child.start_time <= child.end_time <= root.end_time
        previous_end = child.end_time


async def test_http_inference_span_tree(traced: Traced) -> None:
    """A routed HTTP inference is one server span, a child of the caller's traceparent, with
    decode, queue, run and encode under it and the route's attributes."""
    answer = await traced.http.post(
        "/v2/models/iris/infer",
        json=iris_body(),
        headers={"traceparent": TRACEPARENT, "x-request-id": "r-1"},
    )
    assert answer.status_code == 200
    [(root, children)] = traced.trees()
    check_tree(root, children)
    assert root.name == "POST /v2/models/{model}/infer"
    assert root.context is not None and root.parent is not None
    assert f"{root.context.trace_id:032x}" == TRACE_ID and root.parent.is_remote
    assert f"{root.parent.span_id:016x}" == PARENT_ID
    assert dict(root.attributes or {}) == {
        "http.request.method": "POST",
        "http.route": "/v2/models/{model}/infer",
        "url.path": "/v2/models/iris/infer",
        "http.response.status_code": 200,
        "gateway.model": "iris",
        "gateway.variant": "blue",
        "gateway.role": "live",
        "gateway.revision": int(answer.headers["x-gateway-revision"]),
        "gateway.request_id": "r-1",
    }
    assert root.status.status_code == StatusCode.UNSET


async def test_grpc_inference_span_tree(traced: Traced) -> None:
    """A direct gRPC ModelInfer is the same tree, with rpc.* attributes, the traceparent taken
    from the request metadata."""
    request = pb.ModelInferRequest(model_name="iris", model_version="green")
    tensor = request.inputs.add(name="input", datatype="FP32", shape=[1, 4])
    tensor.contents.fp32_contents.extend([5.1, 3.5, 1.4, 0.2])
    async with grpc.aio.insecure_channel(traced.target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        await stub.ModelInfer(request, metadata=[("traceparent", TRACEPARENT)])
    [(root, children)] = traced.trees()
    check_tree(root, children)
    assert root.name == "inference.GRPCInferenceService/ModelInfer"
    assert root.context is not None and f"{root.context.trace_id:032x}" == TRACE_ID
    attributes = dict(root.attributes or {})
    assert {key: attributes[key] for key in attributes if not key.startswith("gateway.re")} == {
        "rpc.system.name": "grpc",
        "rpc.method": "inference.GRPCInferenceService/ModelInfer",
        "rpc.response.status_code": "OK",
        "gateway.model": "iris",
        "gateway.variant": "green",
        "gateway.role": "direct",
    }


async def test_refusals_are_traced_and_server_errors_marked(traced: Traced) -> None:
    """A 404 is a span without steps and without error status; a 504 (the request's own
    timeout on a slow variant) is an error span with error.type; no caller's traceparent: a new
    trace."""
    missing = await traced.http.post("/v2/models/nope/infer", json=iris_body())
    body = iris_body() | {"parameters": {"timeout": 1000}}
    late = await traced.http.post("/v2/models/iris/versions/slow/infer", json=body)
    assert (missing.status_code, late.status_code) == (404, 504)
    [(refused, none), (timed_out, steps)] = traced.trees()
    assert none == [] and refused.parent is None
    assert refused.status.status_code == StatusCode.UNSET
    assert dict(refused.attributes or {})["http.response.status_code"] == 404
    assert timed_out.status.status_code == StatusCode.ERROR
    assert dict(timed_out.attributes or {})["error.type"] == "504"
    assert [step.name for step in steps] == ["decode"]  # refused before it was queued


async def test_spans_reach_an_otlp_receiver(write_config: Callable[..., Path]) -> None:
    """With otel_endpoint set, the spans of a request are exported over OTLP/gRPC (batched;
    flushed when the app stops) with the service name model-gateway."""
    received: list[otlp.ExportTraceServiceRequest] = []

    class Receiver(otlp_grpc.TraceServiceServicer):  # type: ignore[misc]
        async def Export(self, request: Any, context: Any) -> otlp.ExportTraceServiceResponse:
            received.append(request)
            return otlp.ExportTraceServiceResponse()

    server = grpc.aio.server()
    otlp_grpc.add_TraceServiceServicer_to_server(Receiver(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        endpoint = f"http://127.0.0.1:{port}"
        app = create_app(
            load_settings(write_config(otel_endpoint=endpoint), env={}),
            registry=CollectorRegistry(),
        )
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
                answer = await client.post("/v2/models/iris/infer", json=iris_body())
                assert answer.status_code == 200
        spans = [
            (resource.resource, span)
            for request in received
            for resource in request.resource_spans
            for scope in resource.scope_spans
            for span in scope.spans
        ]
        assert sorted(span.name for _, span in spans) == sorted(
            ["POST /v2/models/{model}/infer", *STEPS]
        )
        names = {
            a.value.string_value for r, _ in spans for a in r.attributes if a.key == "service.name"
        }
        assert names == {"model-gateway"}
    finally:
        await server.stop(None)


async def test_a_collector_that_is_down_never_holds_the_shutdown(
    write_config: Callable[..., Path],
) -> None:
    """With otel_endpoint on a closed port, 300 requests are served and the app stops within
    seconds: what the collector cannot take is dropped after FLUSH_S, not retried for 10 s a
    batch (which held SIGTERM's exit for 34 s)."""
    app = create_app(
        load_settings(write_config(otel_endpoint=f"http://127.0.0.1:{free_port()}"), env={}),
        registry=CollectorRegistry(),
    )
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            for _ in range(300):
                answer = await client.post("/v2/models/iris/infer", json=iris_body())
                assert answer.status_code == 200
        stopping = asyncio.get_running_loop().time()
    assert asyncio.get_running_loop().time() - stopping < FLUSH_S + 3.0


async def test_tracing_is_off_without_an_endpoint(make_client: Callable[..., Any]) -> None:
    """No otel_endpoint: the app has no tracing at all (nothing is made per request)."""
    client = await make_client()
    assert (await client.post("/v2/models/iris/infer", json=iris_body())).status_code == 200
    app = client._transport.app  # type: ignore[attr-defined]
    assert app.tracing is None


def test_off_means_not_even_imported() -> None:
    """Without otel_endpoint and grpc_port, serving the bundled config imports neither
    OpenTelemetry nor grpcio nor protobuf: nothing of theirs is on the request path."""
    script = (
        "import asyncio, sys\n"
        "from gateway.http import create_app\n"
        "from gateway.settings import load_settings\n"
        "async def main():\n"
        "    app = create_app(load_settings('gateway.yaml'))\n"
        "    async with app.router.lifespan_context(app):\n"
        "        roots = {name.split('.')[0] for name in sys.modules}\n"
        "        print(sorted(roots & {'opentelemetry', 'grpc', 'google'}))\n"
        "asyncio.run(main())\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "[]"


async def test_grpc_server_stops_with_the_app(write_config: Callable[..., Path]) -> None:
    """The gRPC port is served from the lifespan's start to its end, then closed."""
    port = free_port()
    app = create_app(
        load_settings(write_config(grpc_port=port), env={}), registry=CollectorRegistry()
    )
    async with (
        app.router.lifespan_context(app),
        grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel,
    ):
        live = await pb_grpc.GRPCInferenceServiceStub(channel).ServerLive(pb.ServerLiveRequest())
        assert live.live
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await asyncio.wait_for(
                pb_grpc.GRPCInferenceServiceStub(channel).ServerLive(pb.ServerLiveRequest()), 5
            )
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
