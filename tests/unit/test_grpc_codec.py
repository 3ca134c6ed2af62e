"""ModelInferRequest <-> the gateway's requests and results (README "gRPC": tensors,
deadlines), with the HTTP path's checks."""

import numpy as np
import pytest

from gateway.errors import BadRequest
from gateway.grpc import grpc_predict_v2_pb2 as pb
from gateway.grpc.codec import decode_request, encode_response
from gateway.types import InferResult, RequestedOutput, TensorSpec


def typed(
    datatype: str, shape: list[int], field: str, values: list[object]
) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="m")
    tensor = request.inputs.add(name="x", datatype=datatype, shape=shape)
    getattr(tensor.contents, field).extend(values)
    return request


def raw(datatype: str, shape: list[int], data: bytes) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="m")
    request.inputs.add(name="x", datatype=datatype, shape=shape)
    request.raw_input_contents.append(data)
    return request


def test_typed_and_raw_contents_decode_to_the_same_array() -> None:
    """INT8 from int_contents and from raw bytes are the same array, raw asks for raw outputs."""
    values = np.array([[-128, 0], [5, 127]], dtype=np.int8)
    from_typed = decode_request(
        typed("INT8", [2, 2], "int_contents", values.ravel().tolist()), None
    )
    from_raw = decode_request(raw("INT8", [2, 2], values.tobytes()), None)
    np.testing.assert_array_equal(from_typed.inputs["x"], values)
    np.testing.assert_array_equal(from_raw.inputs["x"], values)
    assert from_typed.inputs["x"].dtype == np.int8
    assert (from_typed.binary_outputs, from_raw.binary_outputs) == (False, True)


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (typed("INT8", [1], "int_contents", [128]), "out of range for int8"),
        (typed("UINT16", [1], "uint_contents", [70000]), "out of range for uint16"),
        (typed("FP32", [2], "fp32_contents", [1.0]), "needs 2 values"),
        (typed("FP32", [1], "fp64_contents", [1.0]), "goes in contents.fp32_contents"),
        (typed("FP16", [1], "fp32_contents", [1.0]), "send it raw"),
        (typed("BYTES", [1], "bytes_contents", [b"a"]), "unsupported datatype"),
        (typed("FP32", [-1], "fp32_contents", [1.0]), "non-negative integers"),
        (raw("FP32", [2], b"\x00" * 4), "binary data has 4 bytes"),
        (pb.ModelInferRequest(model_name="m"), "non-empty 'inputs'"),
    ],
)
def test_bad_tensors_are_refused_with_the_http_messages(
    request_: pb.ModelInferRequest, message: str
) -> None:
    """Each is a BadRequest (INVALID_ARGUMENT) whose message names the problem."""
    with pytest.raises(BadRequest, match=message):
        decode_request(request_, None)


def test_raw_entries_must_match_the_inputs_and_exclude_contents() -> None:
    """One raw entry per input; contents beside raw data is refused."""
    request = raw("FP32", [1], b"\x00" * 4)
    request.inputs.add(name="y", datatype="FP32", shape=[1])
    with pytest.raises(BadRequest, match="1 entries for 2 inputs"):
        decode_request(request, None)
    both = raw("FP32", [1], b"\x00" * 4)
    both.inputs[0].contents.fp32_contents.append(1.0)
    with pytest.raises(BadRequest, match="contents beside raw_input_contents"):
        decode_request(both, None)


def test_deadline_is_the_shorter_of_the_timeout_parameter_and_the_grpc_deadline() -> None:
    """Triton's timeout (µs) and the time left to the gRPC deadline: the shorter wins; a
    deadline already past stays a deadline (not "none"); a non-integer timeout is refused."""
    request = typed("FP32", [1], "fp32_contents", [1.0])
    assert decode_request(request, None).timeout_s is None
    assert decode_request(request, 2.0).timeout_s == 2.0
    request.parameters["timeout"].int64_param = 500_000
    assert decode_request(request, 2.0).timeout_s == 0.5
    assert decode_request(request, 0.1).timeout_s == 0.1
    assert decode_request(request, -1.0).timeout_s == 1e-6
    request.parameters["timeout"].string_param = "1"
    with pytest.raises(BadRequest, match="int64_param"):
        decode_request(request, None)


def test_requested_outputs_and_refused_extensions() -> None:
    """Outputs named once each; Triton's classification parameter is refused, not ignored."""
    request = typed("FP32", [1], "fp32_contents", [1.0])
    request.outputs.add(name="b")
    assert decode_request(request, None).outputs == (RequestedOutput("b"),)
    request.outputs.add(name="b")
    with pytest.raises(BadRequest, match="requested twice"):
        decode_request(request, None)
    del request.outputs[1]
    request.outputs[0].parameters["classification"].int64_param = 2
    with pytest.raises(BadRequest, match="'classification'"):
        decode_request(request, None)


def test_fp16_outputs_make_the_answer_raw() -> None:
    """Typed answers unless an output is FP16, which has no typed field: then all go raw."""
    outputs = {"a": np.array([1.5], np.float32), "h": np.array([2.0], np.float16)}
    specs = {
        "a": TensorSpec("a", "FP32", (-1,)),
        "h": TensorSpec("h", "FP16", (-1,)),
    }
    result = InferResult("m", "v1", "live", 3, outputs, specs)
    request = decode_request(typed("FP32", [1], "fp32_contents", [1.0]), None)
    only_a = request._replace(outputs=(RequestedOutput("a"),))
    typed_answer = encode_response(result, only_a, "id-1")
    assert list(typed_answer.outputs[0].contents.fp32_contents) == [1.5]
    assert typed_answer.id == "id-1" and not typed_answer.raw_output_contents
    raw_answer = encode_response(result, request, "id-1")
    assert [t.name for t in raw_answer.outputs] == ["a", "h"]
    assert np.frombuffer(raw_answer.raw_output_contents[1], np.float16).tolist() == [2.0]
