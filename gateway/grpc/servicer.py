"""The six RPCs of `inference.GRPCInferenceService`, over the gateway's InferenceService.

Thin, as the HTTP endpoints are: decode (gateway.grpc.codec), go through the steps every
transport shares (gateway.exchange: route, run counted in flight, record), encode. A routed
ModelInfer reads the model's sticky header from the request metadata; a `model_version` goes
straight to that variant (role `direct`). Errors end the RPC with their status code
(gateway.grpc.status) and message; an unexpected one is logged and answered INTERNAL. Readiness
follows `GET /v2/health/ready`: false while models load, while Redis has not given the routing,
and during SIGTERM's drain.
"""

import logging
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from gateway import __version__
from gateway.errors import GatewayError
from gateway.exchange import choose_route, infer_counted, record_answer
from gateway.grpc import grpc_predict_v2_pb2 as pb
from gateway.grpc.codec import decode_request, encode_response
from gateway.grpc.status import code_of, trailing_metadata
from gateway.request_ids import header_safe, new_request_id
from gateway.routing import Route
from gateway.types import TensorSpec

if TYPE_CHECKING:
    from gateway.lifecycle import Gateway
    from gateway.tracing import RequestTrace, Tracing

log = logging.getLogger(__name__)

SERVICE = "inference.GRPCInferenceService"
INTERNAL_ERROR = "internal error; the gateway logged the details"
Context = Any  # grpc.aio.ServicerContext (grpcio ships no type hints)


class InferenceServicer:
    """Answers the RPCs of one worker; `draining` tells whether SIGTERM's drain has begun."""

    def __init__(
        self, gateway: "Gateway", draining: Callable[[], bool], tracing: "Tracing | None"
    ) -> None:
        self._gateway = gateway
        self._draining = draining
        self._tracing = tracing

    async def server_live(
        self, request: pb.ServerLiveRequest, context: Context
    ) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def server_ready(
        self, request: pb.ServerReadyRequest, context: Context
    ) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self._ready())

    async def model_ready(
        self, request: pb.ModelReadyRequest, context: Context
    ) -> pb.ModelReadyResponse:
        service = self._gateway.service
        try:
            if request.version:
                service.session(request.name, request.version)
            else:
                service.repository.variants(request.name)
        except GatewayError as exc:
            await context.abort(code_of(exc.status_code), exc.message)
        return pb.ModelReadyResponse(ready=self._ready())

    async def server_metadata(
        self, request: pb.ServerMetadataRequest, context: Context
    ) -> pb.ServerMetadataResponse:
        # Triton's extensions here are HTTP routes (binary data, configuration, statistics,
        # repository): none is an RPC of this service.
        return pb.ServerMetadataResponse(name="model-gateway", version=__version__)

    async def model_metadata(
        self, request: pb.ModelMetadataRequest, context: Context
    ) -> pb.ModelMetadataResponse:
        """As `GET /v2/models/{model}[/versions/{variant}]`: the live variant's tensors unless
        a version (variant) is named; every variant in `versions`."""
        service = self._gateway.service
        try:
            variants = service.repository.variants(request.name)
            session = service.session(
                request.name, request.version or service.table.get(request.name).live
            )
        except GatewayError as exc:
            await context.abort(code_of(exc.status_code), exc.message)
        return pb.ModelMetadataResponse(
            name=request.name,
            versions=list(variants),
            platform="onnxruntime_onnx",
            inputs=_tensors(session.inputs),
            outputs=_tensors(session.outputs),
        )

    async def model_infer(
        self, request: pb.ModelInferRequest, context: Context
    ) -> pb.ModelInferResponse:
        started = time.perf_counter()
        metadata = _metadata(context)
        trace = self._begin_trace(request, metadata, started)
        request_id = header_safe(_text(metadata.get(b"x-request-id"))) or ""
        route: Route | None = None
        response: pb.ModelInferResponse | None = None
        error: GatewayError | None = None
        try:
            route = choose_route(
                self._gateway.service, request.model_name, request.model_version or None, metadata
            )
            response, request_id = await self._answer(
                request, context, route, request_id, started, trace
            )
        except GatewayError as exc:
            error = exc
        except Exception:
            log.exception("unexpected error on ModelInfer of model %r", request.model_name)
            error = GatewayError(INTERNAL_ERROR)  # a 500: INTERNAL
        return await self._end(request, context, route, request_id or new_request_id(), started,
                               trace, response, error)  # fmt: skip

    async def _answer(
        self,
        request: pb.ModelInferRequest,
        context: Context,
        route: Route,
        request_id: str,
        started: float,
        trace: "RequestTrace | None",
    ) -> tuple[pb.ModelInferResponse, str]:
        service = self._gateway.service
        session = service.session(request.model_name, route.variant)
        service.admit(session, started)
        if trace is not None:
            trace.mark()
        decoded = decode_request(request, context.time_remaining())
        if trace is not None:
            trace.step("decode")
        request_id = request_id or (decoded.id and header_safe(decoded.id)) or new_request_id()
        result = await infer_counted(service, session, route, decoded, request_id, started, trace)
        if trace is not None:
            trace.mark()
        response = encode_response(result, decoded, request_id)
        if trace is not None:
            trace.step("encode")
        return response, request_id

    async def _end(
        self,
        request: pb.ModelInferRequest,
        context: Context,
        route: Route | None,
        request_id: str,
        started: float,
        trace: "RequestTrace | None",
        response: pb.ModelInferResponse | None,
        error: GatewayError | None,
    ) -> pb.ModelInferResponse:
        """Count the answer, say who gave it, and send it (or end the RPC with the error)."""
        status = 200 if error is None else error.status_code
        if route is not None:
            seconds = time.perf_counter() - started
            gateway = self._gateway
            record_answer(gateway.service, gateway.access_log, request.model_name, route, status,
                          request_id, seconds)  # fmt: skip
        metadata = trailing_metadata(route, request_id, error)
        code = code_of(status)
        if trace is not None:
            failed = code.name if status >= 500 else None
            trace.finish({"rpc.response.status_code": code.name, "gateway.request_id": request_id},
                         route, failed)  # fmt: skip
        if error is not None:
            await context.abort(code, error.message, trailing_metadata=metadata)
        context.set_trailing_metadata(metadata)
        assert response is not None  # no error: answered
        return response

    def _begin_trace(
        self, request: pb.ModelInferRequest, metadata: dict[bytes, bytes], started: float
    ) -> "RequestTrace | None":
        if self._tracing is None:
            return None
        attributes = {
            "rpc.system.name": "grpc",
            "rpc.method": f"{SERVICE}/ModelInfer",
            "gateway.model": request.model_name,
        }
        return self._tracing.begin(f"{SERVICE}/ModelInfer", metadata, attributes, started)

    def _ready(self) -> bool:
        return self._gateway.service.ready and not self._draining()


def _metadata(context: Context) -> dict[bytes, bytes]:
    """The request's text metadata as ASGI gives HTTP headers (names in lower case, bytes):
    what routing (the sticky header) and tracing (`traceparent`) read."""
    return {
        key.encode("latin-1"): value.encode("latin-1", "replace")
        for key, value in context.invocation_metadata() or ()
        if isinstance(value, str)
    }


def _tensors(specs: Iterable[TensorSpec]) -> list[pb.ModelMetadataResponse.TensorMetadata]:
    metadata = pb.ModelMetadataResponse.TensorMetadata
    return [metadata(name=s.name, datatype=s.datatype, shape=s.shape) for s in specs]


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("latin-1")
