"""KServe v1 / TF Serving style prediction, in both of TF Serving's request formats.

- Row format: `{"instances": [...]}` -> `{"predictions": [...]}`: one entry per instance, a value
  of the single input (or output), or an object keyed by input (or output) name.
- Columnar format: `{"inputs": ...}` -> `{"outputs": ...}`: the whole batch of the single input
  (or output), or an object of whole batches keyed by name.
"""

from typing import Any

from gateway.errors import BadRequest
from gateway.protocol.tensors import dumps, from_json
from gateway.protocol.v2 import parse_json
from gateway.types import InferRequest, InferResult, TensorSpec


def decode_request(body: bytes, inputs: tuple[TensorSpec, ...]) -> InferRequest:
    """Instances (rows) or inputs (columns) as a batch for the model's `inputs`."""
    document = parse_json(body)
    if not isinstance(document, dict) or ("instances" in document) == ("inputs" in document):
        raise BadRequest(
            'request body must be {"instances": [...]} (rows) or {"inputs": ...} (columns)'
        )
    booleans = body.find(b"true") >= 0 or body.find(b"false") >= 0  # not `in`: see v2.py
    if "inputs" in document:
        return InferRequest(None, _columns(document["inputs"], inputs, booleans), columnar=True)
    instances = document["instances"]
    if not isinstance(instances, list) or not instances:
        raise BadRequest('"instances" must be a list with at least one instance')
    if len(inputs) == 1:
        spec = inputs[0]
        return InferRequest(None, {spec.name: _tensor(instances, spec, booleans)})
    if not all(isinstance(instance, dict) for instance in instances):
        raise BadRequest(
            f"this model has inputs {[spec.name for spec in inputs]}: every instance must be "
            "an object with one value per input"
        )
    return InferRequest(
        None, {spec.name: _tensor(_column(instances, spec), spec, booleans) for spec in inputs}
    )


def encode_response(result: InferResult, request: InferRequest) -> bytes:
    """Predictions per instance, or whole outputs for a columnar request."""
    outputs = list(result.outputs.items())
    if request.columnar:
        columns: Any = outputs[0][1] if len(outputs) == 1 else dict(outputs)
        return dumps({"outputs": columns})
    if len(outputs) == 1:
        predictions: Any = outputs[0][1]
    else:
        rows = len(outputs[0][1])
        predictions = [
            {name: array[row].tolist() for name, array in outputs} for row in range(rows)
        ]
    return dumps({"predictions": predictions})


def _columns(columns: Any, inputs: tuple[TensorSpec, ...], booleans: bool) -> dict[str, Any]:
    names = [spec.name for spec in inputs]
    if not isinstance(columns, dict):
        if len(inputs) > 1:
            raise BadRequest(f'this model has inputs {names}: "inputs" must be an object by name')
        columns = {inputs[0].name: columns}
    unknown = sorted(columns.keys() - set(names))
    if unknown:
        raise BadRequest(f"unknown input {unknown[0]!r}; the model's inputs are {names}")
    return {spec.name: _tensor(columns.get(spec.name), spec, booleans) for spec in inputs}


def _tensor(values: Any, spec: TensorSpec, booleans: bool) -> Any:
    if values is None:
        raise BadRequest(f"missing input {spec.name!r}")
    return from_json(values, spec.dtype, None, spec.name, booleans)


def _column(instances: list[dict[str, Any]], spec: TensorSpec) -> list[Any]:
    try:
        return [instance[spec.name] for instance in instances]
    except KeyError:
        raise BadRequest(f"missing input {spec.name!r} in an instance") from None
