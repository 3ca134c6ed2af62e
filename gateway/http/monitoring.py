"""Monitoring routes (README "Monitoring"): feedback on the data plane, reports and reference
profiles on the admin API."""

from typing import Annotated

from pydantic import Field, TypeAdapter
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.errors import Unavailable
from gateway.http.admin import StrictBody, authorized, parse_body
from gateway.http.responses import json_response
from gateway.lifecycle import Gateway
from gateway.monitoring.monitor import Feedback

MAX_FEEDBACK_ITEMS = 10_000
Truth = float | Annotated[list[float], Field(min_length=1, max_length=100_000)]


class FeedbackBody(StrictBody):
    request_id: Annotated[str, Field(min_length=1, max_length=256)]
    truth: Truth


class PinBody(StrictBody):
    rows: Annotated[int, Field(ge=1)] | None = None


_FEEDBACK = TypeAdapter(
    FeedbackBody | Annotated[list[FeedbackBody], Field(min_length=1, max_length=MAX_FEEDBACK_ITEMS)]
)
_PIN = TypeAdapter(PinBody)


def _running(request: Request) -> Gateway:
    gateway: Gateway | None = request.app.gateway
    if gateway is None or request.app.service is None or not request.app.service.ready:
        raise Unavailable("the gateway is not ready yet")
    return gateway


async def feedback(request: Request) -> Response:
    """POST /v2/models/{model}/feedback: one `{"request_id", "truth"}` object or a list."""
    gateway = _running(request)
    model = request.path_params["model"]
    gateway.repository.variants(model)  # 404 for an unknown model, before reading the body
    body = await parse_body(request, _FEEDBACK, limit=request.app.settings.max_body_bytes)
    items = body if isinstance(body, list) else [body]
    found = await gateway.monitor.feedback(
        model, [Feedback(item.request_id, item.truth) for item in items]
    )
    return json_response(found)


async def monitor_report(request: Request) -> Response:
    gateway, model = authorized(request)
    return json_response(await gateway.monitor.report(model))


async def pin_reference(request: Request) -> Response:
    gateway, model = authorized(request)
    body = await parse_body(request, _PIN, optional=True)
    return json_response(await gateway.monitor.pin_reference(model, body.rows))


async def clear_reference(request: Request) -> Response:
    gateway, model = authorized(request)
    await gateway.monitor.clear_reference(model)
    return json_response({"model": model, "reference": None})


DATA_ROUTES = [Route("/v2/models/{model}/feedback", feedback, methods=["POST"])]
ADMIN_ROUTES = [
    Route("/admin/models/{model}/monitor", monitor_report, methods=["GET"]),
    Route("/admin/models/{model}/reference", pin_reference, methods=["POST"]),
    Route("/admin/models/{model}/reference", clear_reference, methods=["DELETE"]),
]
