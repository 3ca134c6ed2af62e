"""Open Inference Protocol v2 inference requests and responses, JSON or binary (README "Routes").

The binary tensor data extension (Triton): when the request header `Inference-Header-Content-Length`
is set, the body is that many bytes of JSON followed by the raw tensors of the inputs that carry
`parameters.binary_data_size`, in input order. Outputs go back the same way when the request asks
for them with `outputs[].parameters.binary_data` or `parameters.binary_data_output`.
"""

import json
from typing import Any

import numpy as np
import orjson

from gateway.errors import BadRequest
from gateway.protocol.tensors import check_shape, dtype_of, dumps, from_bytes, from_json
from gateway.types import InferRequest, InferResult, RequestedOutput


def parse_json(body: bytes) -> Any:
    """The JSON document in `body`; BadRequest when it is not JSON.

    The literals NaN, Infinity and -Infinity, which orjson refuses, are read as floats (Triton
    accepts them in float tensors); the much slower json module parses only such bodies.
    """
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        error = exc
    if b"NaN" in body or b"Infinity" in body:
        try:
            return json.loads(body)
        except (ValueError, RecursionError):
            pass  # orjson's message says where the JSON breaks
    raise BadRequest(f"request body is not valid JSON: {error}")


def decode_request(body: bytes, header_length: str | None = None) -> InferRequest:
    """Decode an inference request body, with the binary extension when `header_length` is set."""
    header, binary = (body, b"") if header_length is None else _split(body, header_length)
    document = parse_json(header)
    if not isinstance(document, dict):
        raise BadRequest("request body must be a JSON object with an 'inputs' list")
    raw_inputs = document.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise BadRequest("request needs a non-empty 'inputs' list")
    # find, not `in`: bytes' `in` first raises and clears a TypeError (docs/lone-request.md)
    may_hold_booleans = header.find(b"true") >= 0 or header.find(b"false") >= 0
    inputs, used = _decode_inputs(raw_inputs, binary, may_hold_booleans)
    if used != len(binary):
        raise BadRequest(f"{len(binary) - used} bytes of binary data follow the tensors declared")
    outputs = document.get("outputs")
    has_parameters = "parameters" in document
    return InferRequest(  # by position: a keyword costs a NamedTuple a slower call
        _request_id(document.get("id")),
        inputs,
        None if outputs is None else _decode_outputs(outputs),
        has_parameters and bool(_flag(document, "binary_data_output", "the request")),
        False,  # columnar: v1 only
        _timeout(document) if has_parameters else None,
    )


def encode_response(
    result: InferResult, request: InferRequest, request_id: str
) -> tuple[bytes, int | None]:
    """The response body, and the JSON header length when binary outputs follow it."""
    wanted = request.outputs or [(name, None) for name in result.outputs]
    outputs, chunks = [], []
    for name, binary in wanted:
        binary = request.binary_outputs if binary is None else binary  # the output's own wins
        array = result.outputs[name]
        entry: dict[str, Any] = {
            "name": name,
            "datatype": result.specs[name].datatype,
            "shape": array.shape,
        }
        if binary:
            raw = array.tobytes()  # C order, whatever the array's own layout
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = array.ravel()  # contiguous (orjson needs it), copied only if need be
        outputs.append(entry)
    document = {
        "model_name": result.model,
        "model_version": result.variant,
        "id": request.id if request.id is not None else request_id,
        "outputs": outputs,
    }
    header = dumps(document)
    if not chunks:
        return header, None
    return b"".join([header, *chunks]), len(header)


def _split(body: bytes, header_length: str) -> tuple[bytes, bytes]:
    length = int(header_length) if header_length.isdigit() else -1
    if not 0 <= length <= len(body):
        raise BadRequest(
            f"Inference-Header-Content-Length {header_length!r} must be an integer "
            f"between 0 and the body size {len(body)}"
        )
    return body[:length], body[length:]


def _request_id(value: object) -> str | None:
    """The body's `id`: a string (the protocol's type), or None."""
    if value is None:
        return None
    if type(value) is not str or not _encodable(value):
        raise BadRequest("'id' must be a string of Unicode characters")
    return value


def _encodable(text: str) -> bool:
    try:
        text.encode()  # a lone surrogate (JSON allows "\ud800") cannot be written back
    except UnicodeEncodeError:
        return False
    return True


def _decode_inputs(
    raw_inputs: list[Any], binary: bytes, may_hold_booleans: bool
) -> tuple[dict[str, np.ndarray], int]:
    inputs: dict[str, np.ndarray] = {}
    offset = 0
    for raw in raw_inputs:
        if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
            raise BadRequest("every input needs a 'name', a 'datatype', a 'shape' and 'data'")
        name = raw["name"]
        if name in inputs:
            raise BadRequest(f"input {name!r} is given twice")
        dtype = dtype_of(raw.get("datatype"), name)
        shape = check_shape(raw.get("shape"), dtype, name)
        parameters = _parameters(raw) if "parameters" in raw else {}
        if "binary_data_size" in parameters:
            size = parameters["binary_data_size"]
            if "data" in raw:
                raise BadRequest(f"input {name!r} has both 'data' and binary_data_size")
            if type(size) is not int or size < 0 or offset + size > len(binary):
                raise BadRequest(
                    f"input {name!r}: binary_data_size {repr(size)[:40]} overruns the body "
                    "or is not a byte count"
                )
            inputs[name] = from_bytes(binary[offset : offset + size], dtype, shape, name)
            offset += size
        elif "data" in raw:
            inputs[name] = from_json(raw["data"], dtype, shape, name, may_hold_booleans)
        else:
            raise BadRequest(f"input {name!r} has neither 'data' nor binary_data_size")
    return inputs, offset


def _decode_outputs(raw_outputs: Any) -> tuple[RequestedOutput, ...] | None:
    """The requested outputs; an empty list asks for all of them, as with Triton."""
    if not isinstance(raw_outputs, list) or not all(
        isinstance(raw, dict) and isinstance(raw.get("name"), str) for raw in raw_outputs
    ):
        raise BadRequest("'outputs' must be a list of objects with a 'name'")
    requested: dict[str, RequestedOutput] = {}
    for raw in raw_outputs:
        name = raw["name"]
        if name in requested:
            raise BadRequest(f"output {name!r} is requested twice")
        where = f"output {name!r}"
        for refused in _UNSUPPORTED_OUTPUT_PARAMETERS:
            if "parameters" in raw and refused in _parameters(raw):
                raise BadRequest(
                    f"{where}: parameter {refused!r} (Triton's classification extension) is not "
                    "supported; request the output's scores and take the top classes yourself"
                )
        binary = _flag(raw, "binary_data", where) if "parameters" in raw else None
        requested[name] = RequestedOutput(name, binary)
    return tuple(requested.values()) or None


_UNSUPPORTED_OUTPUT_PARAMETERS = ("classification", "class_count")


def _flag(document: dict[str, Any], parameter: str, where: str) -> bool | None:
    """A boolean parameter, None when absent; anything but true or false is a BadRequest."""
    value = _parameters(document).get(parameter)
    if value is not None and type(value) is not bool:
        raise BadRequest(
            f"{where}: parameter {parameter!r} must be true or false, got {repr(value)[:40]}"
        )
    return value


def _timeout(document: dict[str, Any]) -> float | None:
    """The request's own deadline in seconds, from Triton's `timeout` parameter (an integer
    number of microseconds; 0 or absent: the server's). Triton's schedule policy extension,
    docs/protocol/extension_schedule_policy.md."""
    value = _parameters(document).get("timeout")
    if value is None:
        return None
    if type(value) is not int or value < 0:
        raise BadRequest(
            "parameter 'timeout' must be a whole number of microseconds, 0 or more, "
            f"got {repr(value)[:40]}"
        )
    return value / 1e6 if value else None


def _parameters(document: dict[str, Any]) -> dict[str, Any]:
    parameters = document.get("parameters")
    if parameters is None:
        return {}
    if not isinstance(parameters, dict):
        raise BadRequest("'parameters' must be a JSON object")
    return parameters
