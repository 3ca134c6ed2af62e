"""Open Inference Protocol v2 inference requests and responses, JSON or binary (CONTRACT §2).

The binary tensor data extension (Triton): when the request header `Inference-Header-Content-Length`
is set, the body is that many bytes of JSON followed by the raw tensors of the inputs that carry
`parameters.binary_data_size`, in input order. Outputs go back the same way when the request asks
for them with `outputs[].parameters.binary_data` or `parameters.binary_data_output`.
"""

from typing import Any

import numpy as np
import orjson

from gateway.errors import BadRequest
from gateway.protocol.tensors import check_shape, dtype_of, from_bytes, from_json
from gateway.types import InferRequest, InferResult, RequestedOutput

_JSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY


def parse_json(body: bytes) -> Any:
    """The JSON document in `body`; BadRequest when it is not JSON."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}") from None


def decode_request(body: bytes, header_length: str | None = None) -> InferRequest:
    """Decode an inference request body, with the binary extension when `header_length` is set."""
    header, binary = _split(body, header_length)
    document = parse_json(header)
    if not isinstance(document, dict):
        raise BadRequest("request body must be a JSON object with an 'inputs' list")
    raw_inputs = document.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise BadRequest("request needs a non-empty 'inputs' list")
    inputs, used = _decode_inputs(raw_inputs, binary)
    if used != len(binary):
        raise BadRequest(f"{len(binary) - used} bytes of binary data follow the tensors declared")
    request_id = document.get("id")
    outputs = document.get("outputs")
    return InferRequest(
        None if request_id is None else str(request_id),
        inputs,
        None if outputs is None else _decode_outputs(outputs),
        "parameters" in document and bool(_parameters(document).get("binary_data_output")),
    )


def encode_response(
    result: InferResult, request: InferRequest, request_id: str
) -> tuple[bytes, int | None]:
    """The response body, and the JSON header length when binary outputs follow it."""
    wanted = request.outputs or [(name, False) for name in result.outputs]
    outputs, chunks = [], []
    for name, binary in wanted:
        array = result.outputs[name]
        entry: dict[str, Any] = {
            "name": name,
            "datatype": result.specs[name].datatype,
            "shape": array.shape,
        }
        if binary or request.binary_outputs:
            raw = array.tobytes()  # C order, whatever the array's own layout
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = np.ascontiguousarray(array).reshape(-1)
        outputs.append(entry)
    document = {
        "model_name": result.model,
        "model_version": result.variant,
        "id": request.id if request.id is not None else request_id,
        "outputs": outputs,
    }
    header = orjson.dumps(document, option=_JSON_OPTIONS)
    if not chunks:
        return header, None
    return b"".join([header, *chunks]), len(header)


def _split(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    if header_length is None:
        return body, b""
    try:
        length = int(header_length)
    except ValueError:
        length = -1
    if not 0 <= length <= len(body):
        raise BadRequest(
            f"Inference-Header-Content-Length {header_length!r} must be an integer "
            f"between 0 and the body size {len(body)}"
        )
    return body[:length], body[length:]


def _decode_inputs(raw_inputs: list[Any], binary: bytes) -> tuple[dict[str, np.ndarray], int]:
    inputs: dict[str, np.ndarray] = {}
    offset = 0
    for raw in raw_inputs:
        if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
            raise BadRequest("every input needs a 'name', a 'datatype', a 'shape' and 'data'")
        name = raw["name"]
        if name in inputs:
            raise BadRequest(f"input {name!r} is given twice")
        dtype = dtype_of(raw.get("datatype"), name)
        shape = check_shape(raw.get("shape"), name)
        size = _parameters(raw).get("binary_data_size") if "parameters" in raw else None
        if size is not None:
            if not isinstance(size, int) or size < 0 or offset + size > len(binary):
                raise BadRequest(f"input {name!r}: binary_data_size {size!r} overruns the body")
            inputs[name] = from_bytes(binary[offset : offset + size], dtype, shape, name)
            offset += size
        elif "data" in raw:
            inputs[name] = from_json(raw["data"], dtype, shape, name)
        else:
            raise BadRequest(f"input {name!r} has neither 'data' nor binary_data_size")
    return inputs, offset


def _decode_outputs(raw_outputs: Any) -> tuple[RequestedOutput, ...]:
    if not isinstance(raw_outputs, list) or not all(
        isinstance(raw, dict) and isinstance(raw.get("name"), str) for raw in raw_outputs
    ):
        raise BadRequest("'outputs' must be a list of objects with a 'name'")
    return tuple(
        RequestedOutput(raw["name"], bool(_parameters(raw).get("binary_data", False)))
        for raw in raw_outputs
    )


def _parameters(document: dict[str, Any]) -> dict[str, Any]:
    parameters = document.get("parameters")
    if parameters is None:
        return {}
    if not isinstance(parameters, dict):
        raise BadRequest("'parameters' must be a JSON object")
    return parameters
