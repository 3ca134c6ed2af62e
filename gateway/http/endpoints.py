"""Data plane endpoints (the README's Routes section): thin, decode -> service -> encode."""

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway import __version__
from gateway.errors import Unavailable
from gateway.http import triton
from gateway.http.inference import INFER, PREDICT, service_of
from gateway.http.responses import json_response
from gateway.service import InferenceService


def _service(request: Request) -> InferenceService:
    return service_of(request.app)


async def server_metadata(request: Request) -> Response:
    extensions = ["binary_tensor_data", *triton.EXTENSIONS]
    return json_response(
        {"name": "model-gateway", "version": __version__, "extensions": extensions}
    )


async def live(request: Request) -> Response:
    return json_response({"live": True})


DRAINING = "the gateway is draining: it is shutting down (SIGTERM)"


async def ready(request: Request) -> Response:
    if request.app.drain.draining:  # README "Graceful shutdown": balancers stop sending here
        return json_response({"ready": False, "error": DRAINING}, 503)
    service = request.app.service
    if service is None or not service.ready:
        reason = "models are still loading" if service is None else service.unready_reason
        message = f"the gateway is not ready yet: {reason}"
        return json_response({"ready": False, "error": message}, 503)
    return json_response({"ready": True})


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
    if request.app.drain.draining:
        raise Unavailable(f"model {model!r} is not ready: {DRAINING}")
    if not service.ready:
        raise Unavailable(f"model {model!r} is not ready yet")
    return json_response({"name": model, "ready": True})


async def metrics(request: Request) -> Response:
    return Response(
        generate_latest(request.app.gateway.metrics.registry), media_type=CONTENT_TYPE_LATEST
    )


ROUTES = [
    # The inference routes first: they are the hot path, and routes are matched in order.
    Route("/v2/models/{model}/infer", INFER, methods=["POST"]),
    Route("/v2/models/{model}/versions/{variant}/infer", INFER, methods=["POST"]),
    Route("/v1/models/{model}:predict", PREDICT, methods=["POST"]),
    *triton.ROUTES,  # before /v2/models/{model}, which would take "stats" for a model's name
    Route("/v2", server_metadata, methods=["GET"]),
    Route("/v2/health/live", live, methods=["GET"]),
    Route("/v2/health/ready", ready, methods=["GET"]),
    Route("/v2/models/{model}", model_metadata, methods=["GET"]),
    Route("/v2/models/{model}/ready", model_ready, methods=["GET"]),
    Route("/v2/models/{model}/versions/{variant}", model_metadata, methods=["GET"]),
    Route("/v2/models/{model}/versions/{variant}/ready", model_ready, methods=["GET"]),
    Route("/metrics", metrics, methods=["GET"]),
]
