"""Data plane endpoints (CONTRACT §2): thin, decode -> service -> encode."""

import time
import uuid
from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway import __version__
from gateway.errors import GatewayError, Unavailable
from gateway.http.body import read_body
from gateway.http.responses import error_response, json_response
from gateway.metrics import exposition_registry
from gateway.protocol import v1, v2
from gateway.routing import Route as Routed
from gateway.runtime import ModelSession
from gateway.service import InferenceService
from gateway.types import InferRequest, InferResult

Encoded = tuple[bytes, int | None]
Decode = Callable[[bytes, Request, ModelSession], InferRequest]
Encode = Callable[[InferResult, InferRequest, str], Encoded]


def _service(request: Request) -> InferenceService:
    service: InferenceService | None = getattr(request.app.state, "service", None)
    if service is None:
        raise Unavailable("the gateway is starting: models are still loading")
    return service


async def server_metadata(request: Request) -> Response:
    return json_response(
        {"name": "model-gateway", "version": __version__, "extensions": ["binary_tensor_data"]}
    )


async def live(request: Request) -> Response:
    return json_response({"live": True})


async def ready(request: Request) -> Response:
    service = getattr(request.app.state, "service", None)
    is_ready = service is not None and service.ready
    return json_response({"ready": is_ready}, 200 if is_ready else 503)


async def model_metadata(request: Request) -> Response:
    service = _service(request)
    model = request.path_params["model"]
    variants = service.repository.variants(model)
    variant = request.path_params.get("variant") or service.table.get(model).live
    session = service.session(model, variant)
    return json_response(
        {
            "name": model,
            "versions": list(variants),
            "platform": "onnxruntime_onnx",
            "inputs": [spec.as_metadata() for spec in session.inputs],
            "outputs": [spec.as_metadata() for spec in session.outputs],
        }
    )


async def model_ready(request: Request) -> Response:
    service = _service(request)
    model = request.path_params["model"]
    variant = request.path_params.get("variant")
    if variant is None:
        service.repository.variants(model)
    else:
        service.session(model, variant)
    if not service.ready:
        raise Unavailable(f"model {model!r} is not ready yet")
    return json_response({"name": model, "ready": True})


async def metrics(request: Request) -> Response:
    registry = exposition_registry(request.app.state.metrics.registry)
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


def _decode_v2(body: bytes, request: Request, session: ModelSession) -> InferRequest:
    return v2.decode_request(body, request.headers.get(v2.HEADER_LENGTH))


def _decode_v1(body: bytes, request: Request, session: ModelSession) -> InferRequest:
    return v1.decode_request(body, session.inputs)


def _encode_v1(result: InferResult, decoded: InferRequest, request_id: str) -> Encoded:
    return v1.encode_response(result), None


async def infer(request: Request) -> Response:
    return await _handle(request, _decode_v2, v2.encode_response)


async def predict(request: Request) -> Response:
    return await _handle(request, _decode_v1, _encode_v1)


async def _handle(request: Request, decode: Decode, encode: Encode) -> Response:
    """One inference request: route, decode, run, encode; errors become JSON answers."""
    started = time.perf_counter()
    service = _service(request)
    model = request.path_params["model"]
    request_id = request.headers.get("x-request-id") or ""
    route: Routed | None = None
    service.metrics.inflight.inc()
    try:
        route = _route(request, service, model)
        decoded = decode(
            await read_body(request, request.app.state.settings.max_body_bytes),
            request,
            service.session(model, route.variant),
        )
        request_id = request_id or decoded.id or uuid.uuid4().hex
        result = await service.infer(model, route, decoded, request_id)
        body, header_length = encode(result, decoded, request_id)
        response = _inference_response(body, header_length, route, request_id)
    except GatewayError as exc:
        headers = _route_headers(route, request_id or uuid.uuid4().hex)
        response = error_response(exc.status_code, exc.message, headers)
    finally:
        service.metrics.inflight.dec()
    if route is not None:
        elapsed = time.perf_counter() - started
        service.metrics.observe_request(
            model, route.variant, route.role, response.status_code, elapsed
        )
    return response


def _route(request: Request, service: InferenceService, model: str) -> Routed:
    variant = request.path_params.get("variant")
    if variant is not None:
        return service.direct(model, variant)
    return service.route(model, request.headers)


def _route_headers(route: Routed | None, request_id: str) -> dict[str, str]:
    headers = {"x-request-id": request_id}
    if route is not None:
        headers["x-gateway-variant"] = route.variant
        headers["x-gateway-role"] = route.role
        headers["x-gateway-revision"] = str(route.revision)
    return headers


def _inference_response(
    body: bytes, header_length: int | None, route: Routed, request_id: str
) -> Response:
    headers = _route_headers(route, request_id)
    if header_length is None:
        return Response(body, headers=headers, media_type="application/json")
    headers["inference-header-content-length"] = str(header_length)
    return Response(body, headers=headers, media_type="application/octet-stream")


ROUTES = [
    Route("/v2", server_metadata, methods=["GET"]),
    Route("/v2/health/live", live, methods=["GET"]),
    Route("/v2/health/ready", ready, methods=["GET"]),
    Route("/v2/models/{model}", model_metadata, methods=["GET"]),
    Route("/v2/models/{model}/ready", model_ready, methods=["GET"]),
    Route("/v2/models/{model}/infer", infer, methods=["POST"]),
    Route("/v2/models/{model}/versions/{variant}", model_metadata, methods=["GET"]),
    Route("/v2/models/{model}/versions/{variant}/ready", model_ready, methods=["GET"]),
    Route("/v2/models/{model}/versions/{variant}/infer", infer, methods=["POST"]),
    Route("/v1/models/{model}:predict", predict, methods=["POST"]),
    Route("/metrics", metrics, methods=["GET"]),
]
