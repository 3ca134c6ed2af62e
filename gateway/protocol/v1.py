"""KServe v1 / TF Serving style prediction: `{"instances": [...]}` -> `{"predictions": [...]}`."""

from typing import Any

import numpy as np
import orjson

from gateway.errors import BadRequest
from gateway.protocol.tensors import from_json
from gateway.protocol.v2 import parse_json
from gateway.types import InferRequest, InferResult, TensorSpec


def decode_request(body: bytes, inputs: tuple[TensorSpec, ...]) -> InferRequest:
    """Instances as a batch: rows of the single input, or objects keyed by input name."""
    document = parse_json(body)
    instances = document.get("instances") if isinstance(document, dict) else None
    if not isinstance(instances, list) or not instances:
        raise BadRequest('request body must be {"instances": [...]} with at least one instance')
    if len(inputs) == 1:
        spec = inputs[0]
        return InferRequest(None, {spec.name: from_json(instances, spec.dtype, None, spec.name)})
    if not all(isinstance(instance, dict) for instance in instances):
        raise BadRequest(
            f"this model has inputs {[spec.name for spec in inputs]}: every instance must be "
            "an object with one value per input"
        )
    return InferRequest(None, {spec.name: _column(instances, spec) for spec in inputs})


def encode_response(result: InferResult) -> bytes:
    """Predictions per instance: the single output's rows, or objects keyed by output name."""
    outputs = list(result.outputs.items())
    if len(outputs) == 1:
        predictions: Any = outputs[0][1]
    else:
        rows = len(outputs[0][1])
        predictions = [
            {name: array[row].tolist() for name, array in outputs} for row in range(rows)
        ]
    return orjson.dumps({"predictions": predictions}, option=orjson.OPT_SERIALIZE_NUMPY)


def _column(instances: list[dict[str, Any]], spec: TensorSpec) -> np.ndarray:
    try:
        values = [instance[spec.name] for instance in instances]
    except KeyError:
        raise BadRequest(f"missing input {spec.name!r} in an instance") from None
    return from_json(values, spec.dtype, None, spec.name)
