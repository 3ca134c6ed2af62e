"""Rollout routes on the admin API (README "Rollouts"): start, read and steer a model's rollout.

`POST /admin/models/{model}/rollout` starts one (the body is a plan; none: the config's plan),
`GET` shows it, and `POST .../rollout/{pause,resume,promote,abort,undo}` are Argo Rollouts'
verbs; `promote` takes `{"full": true}` to skip every step left.
"""

from typing import Any

from pydantic import TypeAdapter
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.errors import BadRequest
from gateway.http.admin import StrictBody, authorized, parse_body
from gateway.http.responses import json_response
from gateway.rollout.plan import RolloutPlan
from gateway.rollout.record import Rollout


class PromoteBody(StrictBody):
    full: bool = False


_PLAN = TypeAdapter(RolloutPlan | None)
_PROMOTE = TypeAdapter(PromoteBody)


def _answer(record: Rollout) -> Response:
    return json_response(record.summary())


async def start(request: Request) -> Response:
    gateway, model = authorized(request)
    gateway.service.table.get(model)  # 404 for an unknown model, before reading the body
    plan = await parse_body(request, _PLAN, optional=True, empty=None)
    return _answer(await gateway.rollouts.begin(model, plan))


async def status(request: Request) -> Response:
    gateway, model = authorized(request)
    record = await gateway.rollouts.status(model)
    return json_response({**record.summary(), "progress": await gateway.rollouts.progress(record)})


async def verb(request: Request) -> Response:
    gateway, model = authorized(request)
    name = request.path_params["verb"]
    rollouts = gateway.rollouts
    actions: dict[str, Any] = {
        "pause": rollouts.pause, "resume": rollouts.resume, "abort": rollouts.abort,
        "undo": rollouts.undo,
    }  # fmt: skip
    if name == "promote":
        body = await parse_body(request, _PROMOTE, optional=True)
        return _answer(await rollouts.promote(model, body.full))
    if name not in actions:
        raise BadRequest(f"unknown rollout action {name!r}; one of promote, {', '.join(actions)}")
    return _answer(await actions[name](model))


ROUTES = [
    Route("/admin/models/{model}/rollout", start, methods=["POST"]),
    Route("/admin/models/{model}/rollout", status, methods=["GET"]),
    Route("/admin/models/{model}/rollout/{verb}", verb, methods=["POST"]),
]
