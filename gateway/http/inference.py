"""The inference endpoints, as plain ASGI apps: the hot path of the gateway (README "Routes").

They skip Starlette's Request and Response objects on purpose: building a Headers object and a
Response for every call cost a fifth of a small model's request in profiles. The flow is the same
as any endpoint: read the body, route, decode, run, encode; a GatewayError becomes its
`{"error"}` answer, anything else is logged and answered 500 (the app lets POSTs to these
endpoints skip Starlette's middleware, error handlers included).
"""

import functools
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any, NamedTuple

import orjson

from gateway.errors import GatewayError, Unavailable
from gateway.exchange import choose_route, infer_counted, record_answer, route_headers
from gateway.http.body import Headers, Receive, read_body
from gateway.http.compression import encode_body, response_coding
from gateway.http.responses import INTERNAL_ERROR
from gateway.protocol import v1, v2
from gateway.request_ids import header_safe as _header_safe
from gateway.request_ids import new_request_id
from gateway.routing import Route
from gateway.runtime import Held, ModelSession
from gateway.service import InferenceService
from gateway.types import InferRequest, InferResult

if TYPE_CHECKING:
    from gateway.tracing import RequestTrace, Tracing

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
Encoded = tuple[bytes, int | None]
RawHeaders = list[tuple[bytes, bytes]]
JSON: RawHeaders = [(b"content-type", b"application/json")]
# The key of an `Admitted` in the ASGI scope (an extension key of the gateway's own).
ADMITTED = "gateway.admitted"


class Admitted(NamedTuple):
    """A request admitted when its head arrived (gateway.http.door): where it goes, when the
    head arrived (`time.perf_counter()` seconds: its deadline counts from then) and the place
    held for it in its variant's queue."""

    route: Route
    session: ModelSession
    started: float
    held: Held | None


class InferenceEndpoint:
    """One inference protocol (v2 or v1) served through the InferenceService."""

    def __init__(
        self,
        decode: Callable[[bytes, Headers, ModelSession], InferRequest],
        encode: Callable[[InferResult, InferRequest, str], Encoded],
    ) -> None:
        self._decode = decode
        self._encode = encode

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        admitted: Admitted | None = scope.get(ADMITTED)
        started = time.perf_counter() if admitted is None else admitted.started
        app = scope["app"]
        headers: Headers = dict(scope["headers"])  # ASGI gives names in lower case
        header_id = headers.get(b"x-request-id")
        request_id = "" if header_id is None else (_header_safe(header_id.decode("latin-1")) or "")
        route: Route | None = None
        extra: RawHeaders = []
        model: str = scope["path_params"]["model"]
        tracing: Tracing | None = app.tracing  # None: tracing is off, and costs these tests
        trace = None if tracing is None else _begin_trace(tracing, scope, headers, started)
        try:
            service = service_of(app)
            if admitted is None:
                route = choose_route(service, model, scope["path_params"].get("variant"), headers)
                session = service.session(model, route.variant)
                held = service.admit(session, started, hold=True)
            else:
                route, session, _, held = admitted
            try:
                body = await read_body(receive, headers, app.settings.max_body_bytes)
                if trace is not None:
                    trace.mark()
                decoded = self._decode(body, headers, session)
                if trace is not None:
                    trace.step("decode")
            finally:  # from here to the queue, nothing waits: the place is taken or given up
                if held is not None:
                    held.release()
            request_id = request_id or _header_safe(decoded.id) or new_request_id()
            payload, content = await self._answer(
                service, session, route, decoded, request_id, started, trace
            )
            status = 200
        except GatewayError as exc:
            status, payload, content = exc.status_code, _error(exc.message), JSON
            extra = _error_headers(exc)
            request_id = request_id or new_request_id()
        except Exception:
            log.exception("unexpected error on POST %s", scope["path"])
            status, payload, content = 500, _error(INTERNAL_ERROR), JSON
            request_id = request_id or new_request_id()
        accept = headers.get(b"accept-encoding")
        if accept is not None and len(payload) > app.settings.compress_above_bytes:
            payload, content = _compressed(payload, content, accept)
        if route is not None:  # counted before the answer leaves, so a scrape after it sees it
            seconds = time.perf_counter() - started
            record_answer(
                app.service, app.gateway.access_log, model, route, status, request_id, seconds
            )
        await _send(send, status, payload, [*content, *extra, *_route_headers(route, request_id)])
        if trace is not None:  # after the answer left: tracing does not delay it
            _finish_trace(trace, status, route, request_id)

    async def _answer(
        self,
        service: InferenceService,
        session: ModelSession,
        route: Route,
        decoded: InferRequest,
        request_id: str,
        started: float,
        trace: "RequestTrace | None",
    ) -> tuple[bytes, RawHeaders]:
        result = await infer_counted(service, session, route, decoded, request_id, started, trace)
        if trace is not None:
            trace.mark()
        payload, header_length = self._encode(result, decoded, request_id)
        if trace is not None:
            trace.step("encode")
        if header_length is None:
            return payload, JSON
        return payload, [
            (b"content-type", b"application/octet-stream"),
            (b"inference-header-content-length", str(header_length).encode()),
        ]


def _begin_trace(
    tracing: "Tracing", scope: Scope, headers: Headers, started: float
) -> "RequestTrace | None":
    route = _route_template(scope)
    attributes = {
        "http.request.method": "POST",
        "http.route": route,
        "url.path": scope["path"],
        "gateway.model": scope["path_params"]["model"],
    }
    return tracing.begin(f"POST {route}", headers, attributes, started)


def _route_template(scope: Scope) -> str:
    """The route of the request, as OpenTelemetry's `http.route` (low cardinality)."""
    if scope["path"].endswith(":predict"):
        return "/v1/models/{model}:predict"
    if scope["path_params"].get("variant") is not None:
        return "/v2/models/{model}/versions/{variant}/infer"
    return "/v2/models/{model}/infer"


def _finish_trace(trace: "RequestTrace", status: int, route: Route | None, request_id: str) -> None:
    attributes = {"http.response.status_code": status, "gateway.request_id": request_id}
    trace.finish(attributes, route, str(status) if status >= 500 else None)


def _compressed(payload: bytes, content: RawHeaders, accept: bytes) -> tuple[bytes, RawHeaders]:
    """The answer in the coding the client prefers (gzip or deflate), or as it is."""
    coding = response_coding(accept)
    if coding is None:
        return payload, content
    compressed = encode_body(payload, coding)
    return compressed, [*content, (b"content-encoding", coding), (b"vary", b"accept-encoding")]


def _error(message: str) -> bytes:
    return orjson.dumps({"error": message})


def _error_headers(exc: GatewayError) -> RawHeaders:
    return [(name.encode(), value.encode()) for name, value in exc.headers]


def error_answer(exc: GatewayError, route: Route, request_id: str) -> tuple[int, bytes, RawHeaders]:
    """Status, body and headers (Content-Length too) of the answer the endpoint gives to `exc`
    raised for a request on `route`."""
    payload = _error(exc.message)
    headers = [*JSON, *_error_headers(exc), *_route_headers(route, request_id)]
    headers.append((b"content-length", str(len(payload)).encode()))
    return exc.status_code, payload, headers


def service_of(app: Any) -> InferenceService:
    """The app's InferenceService; Unavailable (503) until the lifespan has started it."""
    service: InferenceService | None = app.service
    if service is None:
        raise Unavailable("the gateway is starting: models are still loading")
    return service


def _route_headers(route: Route | None, request_id: str) -> RawHeaders:
    headers = [(b"x-request-id", request_id.encode("latin-1"))]
    if route is not None:
        headers += _contract_headers(route.variant, route.role, route.revision)
    return headers


@functools.lru_cache(maxsize=1024)  # a few routes per model and revision: encode each once
def _contract_headers(variant: str, role: str, revision: int) -> tuple[tuple[bytes, bytes], ...]:
    return tuple(
        (name.encode(), value.encode()) for name, value in route_headers(variant, role, revision)
    )


async def _send(send: Send, status: int, payload: bytes, headers: RawHeaders) -> None:
    headers.append((b"content-length", str(len(payload)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


def _decode_v2(body: bytes, headers: Headers, session: ModelSession) -> InferRequest:
    length = headers.get(b"inference-header-content-length")
    return v2.decode_request(body, None if length is None else length.decode("latin-1"))


def _decode_v1(body: bytes, headers: Headers, session: ModelSession) -> InferRequest:
    return v1.decode_request(body, session.inputs)


def _encode_v1(result: InferResult, decoded: InferRequest, request_id: str) -> Encoded:
    return v1.encode_response(result, decoded), None


INFER = InferenceEndpoint(_decode_v2, v2.encode_response)
PREDICT = InferenceEndpoint(_decode_v1, _encode_v1)
