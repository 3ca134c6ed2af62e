"""The steps of one inference request that every transport shares (README "Routes").

HTTP (gateway.http.inference) and gRPC (gateway.grpc) each decode and encode in their own
protocol; between the two they go through these: choose the route, run the request through the
InferenceService counted in `gateway_inflight_requests`, and record the answer in
`gateway_requests_total` / `gateway_request_duration_seconds` (with the HTTP status the answer
has, or would have over HTTP) and the access log. Routing headers are the same for both: HTTP
response headers, gRPC trailing metadata.
"""

import functools
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from gateway.access_log import AccessLog
from gateway.metrics import INFLIGHT
from gateway.routing import Route
from gateway.runtime import ModelSession
from gateway.service import InferenceService
from gateway.types import InferRequest, InferResult

if TYPE_CHECKING:
    from gateway.tracing import RequestTrace


def choose_route(
    service: InferenceService, model: str, variant: str | None, headers: Mapping[bytes, bytes]
) -> Route:
    """Straight to `variant` when named (role `direct`), else routed: live or canary, the
    model's sticky header read from `headers` (names in lower case)."""
    if variant is not None:
        return service.direct(model, variant)
    return service.route(model, headers)


async def infer_counted(
    service: InferenceService,
    session: ModelSession,
    route: Route,
    decoded: InferRequest,
    request_id: str,
    started: float,
    trace: "RequestTrace | None" = None,
) -> InferResult:
    """`service.infer`, counted in flight meanwhile."""
    gauges = service.metrics.gauges  # written in place: no property call on the hot path
    gauges[INFLIGHT] += 1
    try:
        return await service.infer(session, route, decoded, request_id, started, None, trace)
    finally:
        gauges[INFLIGHT] -= 1


def record_answer(
    service: InferenceService,
    access_log: AccessLog | None,
    model: str,
    route: Route,
    status: int,
    request_id: str,
    seconds: float,
) -> None:
    """Count an answer of a routed request (`status`: its HTTP status) that took `seconds`."""
    service.metrics.observe_request(model, route.variant, route.role, status, seconds)
    if access_log is not None:
        access_log.record(request_id, model, route.variant, route.role, status, seconds)


@functools.lru_cache(maxsize=1024)  # a few routes per model and revision: build each once
def route_headers(variant: str, role: str, revision: int) -> Sequence[tuple[str, str]]:
    """Who answered, in the headers every answer carries (README "Asking for predictions")."""
    return (
        ("x-gateway-variant", variant),
        ("x-gateway-role", role),
        ("x-gateway-revision", str(revision)),
    )
