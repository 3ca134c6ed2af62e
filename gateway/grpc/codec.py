"""ModelInferRequest to InferRequest and InferResult to ModelInferResponse (README "gRPC").

The rules are the HTTP ones (README "Asking for predictions"), checked by the same functions of
gateway.protocol.tensors: the same datatypes, shapes, ranges and messages. What is gRPC's own
(KServe's grpc_predict_v2.proto):

- Data comes either in `raw_input_contents`, one entry per input in the order of `inputs`
  (row-major, little-endian: tritonclient.grpc's way), or typed, in each input's `contents`
  field of its datatype (`fp32_contents` for FP32, `int_contents` for INT8, INT16 and INT32...),
  never both. FP16 has no typed field: it travels raw.
- Outputs go back raw when the request came raw or an output is FP16 (the proto does not mix
  raw and typed outputs in one answer), else typed.
- A request's deadline is the gRPC deadline, or Triton's `timeout` parameter (int64
  microseconds) when shorter; both at most `request_timeout_s`.
"""

from collections.abc import Iterable

import numpy as np
from google.protobuf.internal.containers import MessageMap

from gateway.errors import BadRequest
from gateway.grpc.grpc_predict_v2_pb2 import (
    InferParameter,
    InferTensorContents,
    ModelInferRequest,
    ModelInferResponse,
)
from gateway.protocol.tensors import check_shape, dtype_of, from_bytes, from_json
from gateway.types import InferRequest, InferResult, RequestedOutput

# Each datatype's typed field, and the numpy type its values are read as before the checks
# (wide enough that a value out of the datatype's range is seen as such, not wrapped).
CONTENTS: dict[str, tuple[str, type[np.generic]]] = {
    "BOOL": ("bool_contents", np.bool_),
    "INT8": ("int_contents", np.int64),
    "INT16": ("int_contents", np.int64),
    "INT32": ("int_contents", np.int64),
    "INT64": ("int64_contents", np.int64),
    "UINT8": ("uint_contents", np.uint64),
    "UINT16": ("uint_contents", np.uint64),
    "UINT32": ("uint_contents", np.uint64),
    "UINT64": ("uint64_contents", np.uint64),
    "FP32": ("fp32_contents", np.float32),
    "FP64": ("fp64_contents", np.float64),
}
Parameters = MessageMap[str, InferParameter]
# Triton extensions whose parameters would change the answer; refused, never ignored.
UNSUPPORTED_INPUT_PARAMETERS = ("shared_memory_region",)
UNSUPPORTED_OUTPUT_PARAMETERS = ("classification", "shared_memory_region")


def decode_request(request: ModelInferRequest, time_remaining: float | None) -> InferRequest:
    """The request's inputs as arrays and what it asks for; BadRequest for anything the HTTP
    path refuses too. `time_remaining`: seconds to the gRPC deadline (None: none)."""
    raw = request.raw_input_contents
    if not request.inputs:
        raise BadRequest("request needs a non-empty 'inputs' list")
    if raw and len(raw) != len(request.inputs):
        raise BadRequest(
            f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs; "
            "it needs one per input, in the order of 'inputs'"
        )
    inputs: dict[str, np.ndarray] = {}
    for index, tensor in enumerate(request.inputs):
        name = tensor.name
        if name in inputs:
            raise BadRequest(f"input {name!r} is given twice")
        if tensor.parameters:
            _refuse(tensor.parameters, UNSUPPORTED_INPUT_PARAMETERS, f"input {name!r}")
        dtype = dtype_of(tensor.datatype, name)
        shape = check_shape(list(tensor.shape), dtype, name)
        if raw and tensor.HasField("contents"):
            raise BadRequest(f"input {name!r} has contents beside raw_input_contents")
        inputs[name] = from_bytes(raw[index], dtype, shape, name) if raw else _typed(tensor, shape)
    return InferRequest(
        request.id or None,
        inputs,
        _requested(request.outputs) if request.outputs else None,
        bool(raw),  # raw outputs for a raw request
        False,  # columnar: v1 only
        _timeout(request.parameters, time_remaining),
    )


def encode_response(
    result: InferResult, request: InferRequest, request_id: str
) -> ModelInferResponse:
    """The answer: the requested outputs (all, in the model's order, when none were named)."""
    names = [output.name for output in request.outputs] if request.outputs else list(result.outputs)
    datatypes = {name: result.specs[name].datatype for name in names}
    raw = request.binary_outputs or not all(d in CONTENTS for d in datatypes.values())
    response = ModelInferResponse(
        model_name=result.model,
        model_version=result.variant,
        id=request.id if request.id is not None else request_id,
    )
    for name, datatype in datatypes.items():
        array = result.outputs[name]
        tensor = response.outputs.add(name=name, datatype=datatype, shape=array.shape)
        if raw:
            response.raw_output_contents.append(array.tobytes())  # C order, as the proto says
        else:
            getattr(tensor.contents, CONTENTS[datatype][0]).extend(array.ravel().tolist())
    return response


def _typed(tensor: ModelInferRequest.InferInputTensor, shape: tuple[int, ...]) -> np.ndarray:
    name, datatype = tensor.name, tensor.datatype
    if datatype not in CONTENTS:
        raise BadRequest(f"input {name!r}: {datatype} data has no typed field; send it raw")
    field, parsed = CONTENTS[datatype]
    contents: InferTensorContents = tensor.contents
    for descriptor, _ in contents.ListFields():
        if descriptor.name != field:
            raise BadRequest(
                f"input {name!r}: {datatype} data goes in contents.{field}, "
                f"not contents.{descriptor.name}"
            )
    values = np.array(getattr(contents, field), dtype=parsed)
    return from_json(values, dtype_of(datatype, name), shape, name, may_hold_booleans=False)


def _requested(
    outputs: Iterable[ModelInferRequest.InferRequestedOutputTensor],
) -> tuple[RequestedOutput, ...] | None:
    """The requested outputs; none asks for every output, as with Triton."""
    requested: dict[str, RequestedOutput] = {}
    for output in outputs:
        if output.name in requested:
            raise BadRequest(f"output {output.name!r} is requested twice")
        if output.parameters:
            _refuse(output.parameters, UNSUPPORTED_OUTPUT_PARAMETERS, f"output {output.name!r}")
        requested[output.name] = RequestedOutput(output.name)
    return tuple(requested.values()) or None


def _refuse(parameters: Parameters, refused: tuple[str, ...], where: str) -> None:
    for parameter in refused:
        if parameter in parameters:
            raise BadRequest(
                f"{where}: parameter {parameter!r} (a Triton extension) is not supported"
            )


def _timeout(parameters: Parameters, time_remaining: float | None) -> float | None:
    """Seconds the request may take: the shorter of Triton's `timeout` parameter (int64
    microseconds, 0: none) and the gRPC deadline; None: neither (`request_timeout_s` rules)."""
    own = None
    if parameters and "timeout" in parameters:
        parameter = parameters["timeout"]
        if parameter.WhichOneof("parameter_choice") != "int64_param" or parameter.int64_param < 0:
            raise BadRequest(
                "parameter 'timeout' must be an int64_param of microseconds, 0 or more"
            )
        own = parameter.int64_param / 1e6 or None
    if time_remaining is not None:
        time_remaining = max(time_remaining, 1e-6)  # past: not 0, which would mean "none"
        own = time_remaining if own is None else min(own, time_remaining)
    return own
