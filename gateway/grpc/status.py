"""Gateway errors as gRPC status codes, and the trailing metadata of every answer.

An error's HTTP status (gateway.errors) picks its code, as google.rpc.Code's own HTTP mapping
(googleapis google/rpc/code.proto) pairs them: 400 INVALID_ARGUMENT, 404 NOT_FOUND, 429
RESOURCE_EXHAUSTED, 503 UNAVAILABLE, 504 DEADLINE_EXCEEDED; anything else, an unexpected error
included, is INTERNAL. A 429 carries when to try again in its trailing metadata twice over:
`retry-after` (seconds, as the HTTP header) and `grpc-retry-pushback-ms`, which gRPC clients
with a retry policy obey (gRFC A6, "Pushback").
"""

from collections.abc import Sequence

import grpc

from gateway.errors import GatewayError
from gateway.exchange import route_headers
from gateway.routing import Route

CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    409: grpc.StatusCode.FAILED_PRECONDITION,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,  # as gRPC answers a message over its size limit
    415: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}

Metadata = Sequence[tuple[str, str]]


def code_of(status: int) -> grpc.StatusCode:
    """The gRPC code of an answer with HTTP status `status` (200: OK)."""
    if status == 200:
        return grpc.StatusCode.OK
    return CODES.get(status, grpc.StatusCode.INTERNAL)


def trailing_metadata(route: Route | None, request_id: str, error: GatewayError | None) -> Metadata:
    """`x-request-id`, who answered (`x-gateway-variant`, `-role`, `-revision`) once routed,
    and an error's own headers (`retry-after`, with `grpc-retry-pushback-ms` beside it)."""
    metadata = [("x-request-id", request_id)]
    if route is not None:
        metadata += route_headers(route.variant, route.role, route.revision)
    if error is not None:
        for name, value in error.headers:
            metadata.append((name, value))
            if name == "retry-after":
                metadata.append(("grpc-retry-pushback-ms", str(int(value) * 1000)))
    return tuple(metadata)  # grpcio takes tuples only
