"""grpcio's asyncio server on `grpc_port`, in the event loop of the HTTP app (README "gRPC").

The method table is written out here, as the HTTP route table is: each RPC of
`inference.GRPCInferenceService` with its request and response messages. The server starts
once the models are loaded (the lifespan) and stops after uvicorn has stopped serving HTTP,
giving RPCs in flight `shutdown_timeout_s`.

Port sharing. With `gateway serve --workers N`, every worker runs its own gRPC server on the same
port with SO_REUSEPORT (grpcio's `grpc.so_reuseport`): the kernel hands each new connection to
one of the workers. A gRPC connection is long-lived (HTTP/2, many RPCs), so one client's RPCs all
go to the worker that took its connection: many clients (or a client-side balancer that opens
several connections) spread over the workers, a single one does not. A single process binds
without SO_REUSEPORT, so a port already taken stops it at start-up rather than being shared.
"""

import functools
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf.message import DecodeError, Message

from gateway.errors import ConfigError
from gateway.grpc import GrpcBinding
from gateway.grpc import grpc_predict_v2_pb2 as pb
from gateway.grpc.servicer import SERVICE, InferenceServicer

if TYPE_CHECKING:
    from gateway.lifecycle import Gateway
    from gateway.tracing import Tracing

Behaviour = Callable[[Any, Any], Awaitable[Message]]  # (request, context) -> response


class GrpcServer:
    """One worker's gRPC server over its Gateway's service."""

    def __init__(
        self, gateway: "Gateway", draining: Callable[[], bool], tracing: "Tracing | None"
    ) -> None:
        self._gateway = gateway
        self._servicer = InferenceServicer(gateway, draining, tracing)
        self._server: grpc.aio.Server | None = None

    async def start(self, binding: GrpcBinding, port: int) -> None:
        """Listen on `binding.host`:`port`; ConfigError when it cannot."""
        options = [
            ("grpc.so_reuseport", int(binding.share_port)),
            # A larger message is refused by grpcio with RESOURCE_EXHAUSTED (HTTP: 413).
            ("grpc.max_receive_message_length", self._gateway.settings.max_body_bytes),
        ]
        server = grpc.aio.server(options=options)
        server.add_generic_rpc_handlers((method_table(self._servicer),))
        address = f"[{binding.host}]:{port}" if ":" in binding.host else f"{binding.host}:{port}"
        try:
            server.add_insecure_port(address)
        except RuntimeError as exc:  # grpcio: "Failed to bind to address ..."
            raise ConfigError(f"grpc_port: cannot listen on {address}: {exc}") from None
        await server.start()
        self._server = server

    async def stop(self, grace_s: float) -> None:
        """Refuse new RPCs; give those in flight `grace_s` seconds, then cancel them."""
        if self._server is not None:
            await self._server.stop(grace_s)
            self._server = None


def method_table(servicer: InferenceServicer) -> grpc.GenericRpcHandler:
    """Every RPC of the service, by name, with its messages' (de)serializers."""

    def rpc(behaviour: Behaviour, request: type[Message], response: type[Message]) -> Any:
        return grpc.unary_unary_rpc_method_handler(
            _readable(behaviour, request),
            request_deserializer=functools.partial(_parse, request),
            response_serializer=response.SerializeToString,
        )

    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "ServerLive": rpc(servicer.server_live, pb.ServerLiveRequest, pb.ServerLiveResponse),
            "ServerReady": rpc(
                servicer.server_ready, pb.ServerReadyRequest, pb.ServerReadyResponse
            ),
            "ModelReady": rpc(servicer.model_ready, pb.ModelReadyRequest, pb.ModelReadyResponse),
            "ServerMetadata": rpc(
                servicer.server_metadata, pb.ServerMetadataRequest, pb.ServerMetadataResponse
            ),
            "ModelMetadata": rpc(
                servicer.model_metadata, pb.ModelMetadataRequest, pb.ModelMetadataResponse
            ),
            "ModelInfer": rpc(servicer.model_infer, pb.ModelInferRequest, pb.ModelInferResponse),
        },
    )


def _parse(request: type[Message], data: bytes) -> Message | None:
    """The request message; None for bytes that are not one, which grpcio would otherwise
    answer INTERNAL (a fault of the server's) rather than INVALID_ARGUMENT."""
    try:
        return request.FromString(data)
    except DecodeError:
        return None


def _readable(behaviour: Behaviour, request: type[Message]) -> Behaviour:
    async def answer(message: Message | None, context: Any) -> Message:
        if message is None:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"not a valid {request.__name__} message"
            )
        return await behaviour(message, context)

    return answer
