"""Triton's model configuration, statistics and model repository extensions, so that
tritonclient's `get_model_config`, `get_inference_statistics` and `get_model_repository_index`
work against the gateway unchanged. The shapes follow Triton's protocol documents,
https://github.com/triton-inference-server/server/blob/main/docs/protocol/:
`extension_model_configuration.md`, `extension_statistics.md`, `extension_model_repository.md`.

A Triton "version" is a variant name here, as everywhere in the gateway's v2 API.
"""

from typing import Any

from pydantic import BaseModel, ConfigDict, StrictBool, ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.errors import BadRequest, Conflict
from gateway.http.body import read_body
from gateway.http.inference import service_of
from gateway.http.responses import json_response
from gateway.metrics import VariantStats
from gateway.protocol.v2 import parse_json
from gateway.runtime import ModelSession, QueuePolicy
from gateway.service import InferenceService
from gateway.types import TensorSpec

EXTENSIONS = ["model_configuration", "statistics", "model_repository"]
_INDEX_BODY_LIMIT = 64 * 1024
_NOT_MEASURED = {"count": 0, "ns": 0}


def model_config(model: str, session: ModelSession, policy: QueuePolicy) -> dict[str, Any]:
    """The variant as a Triton model config (model_config.proto's JSON form).

    Without batching `max_batch_size` is 0 and the batch dimension is part of every input's
    `dims`, as the ONNX file declares it (-1 when dynamic). With it, as in Triton, `dims` leave
    the batch dimension out and `dynamic_batching` gives the queue's settings.
    """
    skip = 1 if policy.batching else 0
    config: dict[str, Any] = {
        "name": model,
        "platform": "onnxruntime_onnx",
        "backend": "onnxruntime",
        "max_batch_size": policy.max_batch_size,
        "input": [
            _tensor_config(spec, skip) | {"format": "FORMAT_NONE"} for spec in session.inputs
        ],
        "output": [_tensor_config(spec, skip) for spec in session.outputs],
        "parameters": {"variant": {"string_value": session.variant}},
    }
    if policy.batching:
        config["dynamic_batching"] = {
            "preferred_batch_size": list(policy.preferred_batch_size),
            "max_queue_delay_microseconds": round(policy.max_queue_delay_s * 1e6),
            "default_queue_policy": {"max_queue_size": policy.max_queue_size},
        }
    return config


def _tensor_config(spec: TensorSpec, skip: int) -> dict[str, Any]:
    dims = list(spec.shape[skip:])
    return {"name": spec.name, "data_type": f"TYPE_{spec.datatype}", "dims": dims}


def model_stat(model: str, variant: str, stats: VariantStats) -> dict[str, Any]:
    """One variant's statistics, as Triton's `$model_stat`.

    `success` and `fail` are the variant's answers (status 200, any other) and their whole time
    in the gateway; `compute_infer` its model runs. Phases the gateway does not time apart
    (queue, compute_input, compute_output) and the cache it does not have are zeros.
    """
    return {
        "name": model,
        "version": variant,
        "last_inference": round(stats.last_run * 1000),
        "inference_count": stats.rows,
        "execution_count": stats.runs,
        "inference_stats": {
            "success": _duration(stats.success, stats.success_seconds),
            "fail": _duration(stats.fail, stats.fail_seconds),
            "queue": _NOT_MEASURED,
            "compute_input": _NOT_MEASURED,
            "compute_infer": _duration(stats.runs, stats.run_seconds),
            "compute_output": _NOT_MEASURED,
            "cache_hit": _NOT_MEASURED,
            "cache_miss": _NOT_MEASURED,
        },
        "batch_stats": [],
    }


def _duration(count: int, seconds: float) -> dict[str, int]:
    return {"count": count, "ns": round(seconds * 1e9)}


async def config(request: Request) -> Response:
    """`GET /v2/models/{model}[/versions/{variant}]/config`: the live variant unless named."""
    service = service_of(request.app)
    model = request.path_params["model"]
    service.repository.variants(model)  # 404 for an unknown model
    variant = request.path_params.get("variant") or service.table.get(model).live
    policy = service.scheduler.policy(model, variant)
    return json_response(model_config(model, service.session(model, variant), policy))


async def stats(request: Request) -> Response:
    """`GET /v2/models[/{model}[/versions/{variant}]]/stats`, summed over every worker."""
    service = service_of(request.app)
    known = request.app.gateway.metrics.variant_stats()
    return json_response(
        {
            "model_stats": [
                model_stat(model, variant, known.get((model, variant), VariantStats()))
                for model, variant in _variants(service, request.path_params)
            ]
        }
    )


def _variants(service: InferenceService, path: dict[str, str]) -> list[tuple[str, str]]:
    """The (model, variant) pairs a path names: all of them, one model's, or one."""
    model, variant = path.get("model"), path.get("variant")
    if model is None:
        return [(m, v) for m, variants in service.repository.models.items() for v in variants]
    if variant is None:
        return [(model, v) for v in service.repository.variants(model)]
    service.session(model, variant)  # 404 for an unknown model or variant
    return [(model, variant)]


class IndexBody(BaseModel):
    """Triton's `$repository_index_request`; the body may also be empty."""

    model_config = ConfigDict(frozen=True)

    ready: StrictBool = False  # only the variants ready for inference


async def repository_index(request: Request) -> Response:
    """`POST /v2/repository/index`: every variant, READY once loaded, warm and routable."""
    body = await _index_body(request)
    service: InferenceService | None = request.app.service
    if service is None:  # still loading: the config's variants
        models = {name: list(model.variants) for name, model in request.app.settings.models.items()}
        state, reason = "LOADING", "the gateway is loading its models"
    else:
        models = {name: list(variants) for name, variants in service.repository.models.items()}
        state, reason = "READY", ""
        if not service.ready:
            state, reason = "UNAVAILABLE", "the gateway is not ready: see GET /v2/health/ready"
    if body.ready and state != "READY":
        return json_response([])
    return json_response(
        [
            {"name": model, "version": variant, "state": state, "reason": reason}
            for model, variants in models.items()
            for variant in variants
        ]
    )


async def _index_body(request: Request) -> IndexBody:
    raw = await read_body(request.receive, dict(request.scope["headers"]), _INDEX_BODY_LIMIT)
    try:
        return IndexBody.model_validate(parse_json(raw) if raw.strip() else {})
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}"
            for e in exc.errors(include_url=False)
        )
        raise BadRequest(f"invalid request body: {problems}") from None


async def load_or_unload(request: Request) -> Response:
    """`POST /v2/repository/models/{model}/load` and `/unload`: refused with 409.

    The gateway serves the models of its config file, every variant loaded and warm before it
    can be routed to; Triton itself refuses these calls when it does not manage models on
    request (model control mode `none`).
    """
    action = request.url.path.rsplit("/", 1)[-1]
    raise Conflict(
        f"cannot {action} models one by one: the gateway serves the models of its config file; "
        "edit the file, then POST /admin/reload (or `gateway serve` again)"
    )


ROUTES = [
    Route("/v2/models/stats", stats, methods=["GET"]),
    Route("/v2/models/{model}/config", config, methods=["GET"]),
    Route("/v2/models/{model}/stats", stats, methods=["GET"]),
    Route("/v2/models/{model}/versions/{variant}/config", config, methods=["GET"]),
    Route("/v2/models/{model}/versions/{variant}/stats", stats, methods=["GET"]),
    Route("/v2/repository/index", repository_index, methods=["POST"]),
    Route("/v2/repository/models/{model}/load", load_or_unload, methods=["POST"]),
    Route("/v2/repository/models/{model}/unload", load_or_unload, methods=["POST"]),
]
