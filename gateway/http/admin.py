"""Admin API (README's admin table): routing state, changes, history, rollback and reload."""

import hmac
from typing import Any

from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.errors import BadRequest, Forbidden, Unauthorized, Unavailable
from gateway.http.body import read_body
from gateway.http.responses import json_response
from gateway.lifecycle import Gateway
from gateway.protocol.v2 import parse_json
from gateway.routing import RoutingState, Shadow

ADMIN_BODY_LIMIT = 64 * 1024


class StrictBody(BaseModel):
    # Strict: a bool or a string is never a number, a float never a revision (README "Admin").
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


class CanaryBody(StrictBody):
    variant: str
    weight: float


class FlipBody(StrictBody):
    to: str


class ShadowBody(StrictBody):
    variant: str
    sample: float = 1.0


class RollbackBody(StrictBody):
    to_revision: int | None = None


_CANARY = TypeAdapter(CanaryBody)
_FLIP = TypeAdapter(FlipBody)
_SHADOWS = TypeAdapter(list[ShadowBody])
_ROLLBACK = TypeAdapter(RollbackBody)


def _gateway(request: Request) -> Gateway:
    """The running gateway, once the caller has proved they hold the admin token."""
    token = request.app.settings.admin_token
    if token is None or not token.get_secret_value():
        raise Forbidden("the admin API is off: set GATEWAY_ADMIN_TOKEN to turn it on")
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    expected = token.get_secret_value().encode()
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected):
        raise Unauthorized("missing or wrong admin token (Authorization: Bearer <token>)")
    gateway: Gateway | None = request.app.gateway
    if gateway is None or request.app.service is None or not request.app.service.ready:
        raise Unavailable("the gateway is not ready yet")
    return gateway


async def parse_body(
    request: Request,
    adapter: Any,
    optional: bool = False,
    limit: int = ADMIN_BODY_LIMIT,
    empty: Any = b"{}",
) -> Any:
    """The JSON body validated by `adapter` (strict types); BadRequest naming each field.
    `optional`: an empty body reads as `empty` (JSON)."""
    raw = await read_body(request.receive, dict(request.scope["headers"]), limit)
    if optional and not raw.strip():
        if empty is None:
            return None
        raw = empty
    try:
        return adapter.validate_python(parse_json(raw))
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}"
            for e in exc.errors(include_url=False)
        )
        raise BadRequest(f"invalid request body: {problems}") from None


def state_json(gateway: Gateway, model: str, state: RoutingState) -> dict[str, Any]:
    """The admin API's view of one model's routing (the README's admin API table), with the
    registry version of each `models:/` variant (README "Sources and sinks")."""
    view = {
        "model": model,
        **state.to_dict(),
        "variants": sorted(gateway.repository.variants(model)),
    }
    sources = gateway.model_sources.describe(model)
    if sources:
        view["sources"] = sources
    return view


def _answer(gateway: Gateway, model: str, state: RoutingState) -> Response:
    return json_response(state_json(gateway, model, state))


def authorized(request: Request) -> tuple[Gateway, str]:
    """The running gateway (after the token check) and the model named in the path."""
    return _gateway(request), request.path_params["model"]


async def list_models(request: Request) -> Response:
    gateway = _gateway(request)
    states = gateway.service.table.all()
    return json_response([state_json(gateway, m, s) for m, s in sorted(states.items())])


async def get_model(request: Request) -> Response:
    gateway, model = authorized(request)
    return _answer(gateway, model, gateway.service.table.get(model))


async def history(request: Request) -> Response:
    gateway, model = authorized(request)
    entries = await gateway.control.history(model)
    return json_response([entry.to_dict() for entry in entries])


async def put_canary(request: Request) -> Response:
    gateway, model = authorized(request)
    body = await parse_body(request, _CANARY)
    return _answer(
        gateway, model, await gateway.control.set_canary(model, body.variant, body.weight)
    )


async def delete_canary(request: Request) -> Response:
    gateway, model = authorized(request)
    return _answer(gateway, model, await gateway.control.abort_canary(model))


async def promote(request: Request) -> Response:
    gateway, model = authorized(request)
    return _answer(gateway, model, await gateway.control.promote(model))


async def flip(request: Request) -> Response:
    gateway, model = authorized(request)
    body = await parse_body(request, _FLIP)
    return _answer(gateway, model, await gateway.control.flip(model, body.to))


async def put_shadows(request: Request) -> Response:
    gateway, model = authorized(request)
    shadows = [Shadow(body.variant, body.sample) for body in await parse_body(request, _SHADOWS)]
    return _answer(gateway, model, await gateway.control.set_shadows(model, shadows))


async def rollback(request: Request) -> Response:
    gateway, model = authorized(request)
    body = await parse_body(request, _ROLLBACK, optional=True)
    return _answer(gateway, model, await gateway.control.rollback(model, body.to_revision))


async def reload(request: Request) -> Response:
    gateway = _gateway(request)
    models = await gateway.reload()
    states = gateway.service.table.all()
    return json_response({"models": [state_json(gateway, m, states[m]) for m in models]})


ROUTES = [
    Route("/admin/models", list_models, methods=["GET"]),
    Route("/admin/models/{model}", get_model, methods=["GET"]),
    Route("/admin/models/{model}/history", history, methods=["GET"]),
    Route("/admin/models/{model}/canary", put_canary, methods=["PUT"]),
    Route("/admin/models/{model}/canary", delete_canary, methods=["DELETE"]),
    Route("/admin/models/{model}/promote", promote, methods=["POST"]),
    Route("/admin/models/{model}/flip", flip, methods=["POST"]),
    Route("/admin/models/{model}/shadows", put_shadows, methods=["PUT"]),
    Route("/admin/models/{model}/rollback", rollback, methods=["POST"]),
    Route("/admin/reload", reload, methods=["POST"]),
]
