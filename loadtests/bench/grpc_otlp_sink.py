"""An OTLP/gRPC trace receiver that counts the spans it is sent and keeps none: the collector
the gateway exports to while grpc_bench.py measures tracing on.

    python loadtests/bench/grpc_otlp_sink.py --port 4317
"""

import argparse
import asyncio
import contextlib
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as otlp
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc as otlp_grpc


class Sink(otlp_grpc.TraceServiceServicer):  # type: ignore[misc]
    def __init__(self) -> None:
        self.spans = 0

    async def Export(self, request: Any, context: Any) -> otlp.ExportTraceServiceResponse:
        self.spans += sum(
            len(scope.spans) for spans in request.resource_spans for scope in spans.scope_spans
        )
        return otlp.ExportTraceServiceResponse()


async def serve(port: int) -> None:
    server = grpc.aio.server()
    otlp_grpc.add_TraceServiceServicer_to_server(Sink(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=4317)
    with contextlib.suppress(KeyboardInterrupt):  # SIGINT: the benchmark is done with it
        asyncio.run(serve(parser.parse_args().port))


if __name__ == "__main__":
    main()
