"""Decoding and encoding of Open Inference Protocol v2 and KServe v1 bodies."""

import json
import math

import numpy as np
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from gateway.errors import BadRequest
from gateway.protocol import v1, v2
from gateway.types import (
    DATATYPE_OF,
    DATATYPES,
    InferRequest,
    InferResult,
    RequestedOutput,
    TensorSpec,
)

NUMERIC = ["BOOL", "INT8", "INT32", "INT64", "UINT8", "FP32", "FP64"]
shapes = hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=5)


def arrays_of(datatype: str) -> st.SearchStrategy[np.ndarray]:
    return hnp.arrays(
        DATATYPES[datatype],
        shapes,
        elements={"allow_nan": False, "allow_infinity": False}
        if datatype.startswith("FP")
        else None,
    )


def binary_body(
    arrays: dict[str, np.ndarray], outputs: list[dict[str, object]] | None = None
) -> tuple[bytes, str]:
    document: dict[str, object] = {
        "inputs": [
            {"name": name, "datatype": DATATYPE_OF[a.dtype], "shape": list(a.shape),
             "parameters": {"binary_data_size": a.nbytes}}
            for name, a in arrays.items()
        ]
    }  # fmt: skip
    if outputs is not None:
        document["outputs"] = outputs
    header = orjson.dumps(document)
    return header + b"".join(a.tobytes() for a in arrays.values()), str(len(header))


def json_body(array: np.ndarray, data: object) -> bytes:
    tensor = {"name": "x", "datatype": DATATYPE_OF[array.dtype], "shape": list(array.shape)}
    return orjson.dumps({"inputs": [{**tensor, "data": data}]})


@given(st.sampled_from(NUMERIC).flatmap(arrays_of))
def test_json_tensor_round_trip(array: np.ndarray) -> None:
    """Any numeric tensor sent as nested JSON data comes back with its values, dtype and shape."""
    decoded = v2.decode_request(json_body(array, array.tolist())).inputs["x"]
    assert decoded.dtype == array.dtype and decoded.shape == array.shape
    np.testing.assert_array_equal(decoded, array)


@given(st.sampled_from(NUMERIC).flatmap(arrays_of))
def test_flat_json_data_is_reshaped(array: np.ndarray) -> None:
    """Flat `data` is reshaped to the declared shape, as the protocol allows."""
    decoded = v2.decode_request(json_body(array, array.reshape(-1).tolist())).inputs["x"]
    np.testing.assert_array_equal(decoded, array)


@given(st.sampled_from(NUMERIC).flatmap(arrays_of), st.sampled_from(NUMERIC).flatmap(arrays_of))
def test_binary_tensors_round_trip(first: np.ndarray, second: np.ndarray) -> None:
    """Two tensors in Triton's binary extension decode to the same arrays, in order."""
    body, length = binary_body({"a": first, "b": second})
    inputs = v2.decode_request(body, length).inputs
    np.testing.assert_array_equal(inputs["a"], first)
    np.testing.assert_array_equal(inputs["b"], second)
    assert inputs["a"].dtype == first.dtype and inputs["b"].shape == second.shape


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"not json", "not valid JSON"),
        (b"[1, 2]", "JSON object"),
        (b"{}", "non-empty 'inputs'"),
        (b'{"inputs": []}', "non-empty 'inputs'"),
        (b'{"inputs": [{"datatype": "FP32", "shape": [1], "data": [1]}]}', "'name'"),
        (
            b'{"inputs": [{"name": "x", "datatype": "FP99", "shape": [1], "data": [1]}]}',
            "unsupported datatype",
        ),
        (
            b'{"inputs": [{"name": "x", "datatype": "BYTES", "shape": [1], "data": ["a"]}]}',
            "unsupported datatype",
        ),
        (
            b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [2], "data": [1]}]}',
            "needs 2 values",
        ),
        (
            b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": "2", "data": [1, 2]}]}',
            "shape must be",
        ),
        (
            b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1], "data": [1]}]}',
            "shape must be",
        ),
        (
            b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [2], "data": ["a", "b"]}]}',
            "must be numbers",
        ),
        (
            b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [null]}]}',
            "must be numbers",
        ),
        (
            b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 2], "data": [[1, 2], [3]]}]}',
            "ragged",
        ),
        (
            b'{"inputs": [{"name": "x", "datatype": "INT32", "shape": [1], "data": [1.5]}]}',
            "cannot be sent as int32",
        ),
        (
            b'{"inputs": [{"name": "x", "datatype": "INT8", "shape": [1], "data": [300]}]}',
            "out of range",
        ),
        (
            b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1e300]}]}',
            "out of range for float32",
        ),
        (
            b'{"inputs": [{"name": "x", "datatype": "FP16", "shape": [1], "data": [100000]}]}',
            "out of range for float16",
        ),
        (
            b'{"inputs": [{"name": "x", "datatype": "BOOL", "shape": [1], "data": [2]}]}',
            "cannot be sent as bool",
        ),
        (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1]}]}', "neither 'data'"),
        (
            b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}, {"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}]}',
            "twice",
        ),
        (
            b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}], "outputs": "y"}',
            "'outputs'",
        ),
        (
            b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}], "parameters": 3}',
            "'parameters'",
        ),
    ],
)
def test_bad_json_requests_are_refused(body: bytes, message: str) -> None:
    """Each malformed v2 body raises BadRequest with a message that says what is wrong."""
    with pytest.raises(BadRequest, match=message):
        v2.decode_request(body)


@pytest.mark.parametrize(
    ("size", "extra", "length", "message"),
    [
        (8, b"", None, "binary data has 8 bytes"),
        (16, b"", None, "binary_data_size 16 overruns"),
        (12, b"xx", None, "2 bytes of binary data follow"),
        (12, b"", "abc", "must be an integer"),
        (12, b"", "99999", "must be an integer"),
    ],
)
def test_bad_binary_requests_are_refused(
    size: int, extra: bytes, length: str | None, message: str
) -> None:
    """Binary sizes that do not add up, or a bad header length, are a clear BadRequest."""
    tensor = np.arange(3, dtype=np.float32).tobytes()  # 12 bytes
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "datatype": "FP32",
                    "shape": [3],
                    "parameters": {"binary_data_size": size},
                }
            ]
        }
    )
    with pytest.raises(BadRequest, match=message):
        v2.decode_request(header + tensor + extra, length or str(len(header)))


def test_binary_bools_are_bytes_0_or_1() -> None:
    """A BOOL in binary data is one byte, 0 or 1: other bytes are refused, as the JSON literals
    true and false admit nothing else (a byte of 2 reached the model and came back as 2)."""
    header = orjson.dumps(
        {"inputs": [{"name": "b", "datatype": "BOOL", "shape": [3],
                     "parameters": {"binary_data_size": 3}}]}
    )  # fmt: skip
    decoded = v2.decode_request(header + b"\x01\x00\x01", str(len(header)))
    assert decoded.inputs["b"].tolist() == [True, False, True]
    with pytest.raises(BadRequest, match="BOOL binary data holds bytes other than 0 and 1"):
        v2.decode_request(header + b"\x02\x00\xff", str(len(header)))


def _result(**outputs: np.ndarray) -> InferResult:
    specs = {name: TensorSpec(name, DATATYPE_OF[a.dtype], a.shape) for name, a in outputs.items()}
    return InferResult("iris", "blue", "live", 3, outputs, specs)


def test_json_response_has_protocol_fields() -> None:
    """A JSON response names the model, the answering variant, the id, and every output."""
    result = _result(
        label=np.array([0, 2]), probabilities=np.array([[0.5, 0.5], [0.25, 0.75]], np.float32)
    )
    body, length = v2.encode_response(result, InferRequest("abc", {}), "abc")
    document = orjson.loads(body)
    assert length is None
    assert (
        document["model_name"] == "iris"
        and document["model_version"] == "blue"
        and document["id"] == "abc"
    )
    assert document["outputs"] == [
        {"name": "label", "datatype": "INT64", "shape": [2], "data": [0, 2]},
        {
            "name": "probabilities",
            "datatype": "FP32",
            "shape": [2, 2],
            "data": [0.5, 0.5, 0.25, 0.75],
        },
    ]


def test_binary_outputs_follow_the_json_header() -> None:
    """Outputs asked for as binary come after the JSON header, sized in `binary_data_size`."""
    scores = np.array([[1.5, -2.0]], np.float32)
    result = _result(label=np.array([1]), scores=scores)
    request = InferRequest(
        None, {}, outputs=(RequestedOutput("scores", binary=True), RequestedOutput("label"))
    )
    body, length = v2.encode_response(result, request, "r1")
    assert length is not None
    header = orjson.loads(body[:length])
    assert header["outputs"][0] == {
        "name": "scores",
        "datatype": "FP32",
        "shape": [1, 2],
        "parameters": {"binary_data_size": 8},
    }
    assert header["outputs"][1]["data"] == [1]
    np.testing.assert_array_equal(np.frombuffer(body[length:], np.float32).reshape(1, 2), scores)


def test_binary_data_output_parameter_makes_every_output_binary() -> None:
    """`parameters.binary_data_output` (tritonclient's default) turns all outputs binary."""
    body = orjson.dumps(
        {
            "inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}],
            "parameters": {"binary_data_output": True},
        }
    )
    request = v2.decode_request(body)
    _, length = v2.encode_response(_result(label=np.array([1])), request, "r")
    assert request.binary_outputs and length is not None


IRIS_INPUT = (TensorSpec("input", "FP32", (-1, 4)),)


def test_v1_instances_become_one_batch() -> None:
    """v1 instances are stacked into one batch of the model's single input, in its datatype."""
    request = v1.decode_request(b'{"instances": [[1, 2, 3, 4], [5, 6, 7, 8]]}', IRIS_INPUT)
    assert request.inputs["input"].dtype == np.float32 and request.inputs["input"].shape == (2, 4)


ROWS = InferRequest(None, {})


def test_v1_predictions_per_instance() -> None:
    """Several outputs give one object per instance; a single output gives its rows."""
    both = orjson.loads(
        v1.encode_response(
            _result(label=np.array([0, 2]), p=np.array([[0.5], [0.25]], np.float32)), ROWS
        )
    )
    assert both == {"predictions": [{"label": 0, "p": [0.5]}, {"label": 2, "p": [0.25]}]}
    one = orjson.loads(v1.encode_response(_result(scores=np.array([[1.0, 2.0]], np.float32)), ROWS))
    assert one == {"predictions": [[1.0, 2.0]]}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{", "not valid JSON"),
        (b'{"inputs": [[1, 2, 3, 4]], "instances": [[1, 2, 3, 4]]}', "instances"),
        (b'{"inputs": {"other": [[1, 2, 3, 4]]}}', "unknown input 'other'"),
        (b'{"instances": [[1, 2, true, 4]]}', "mixes booleans"),
        (b'{"instances": []}', "instances"),
        (b'{"instances": [["a", "b", "c", "d"]]}', "must be numbers"),
        (b'{"instances": [[1, 2], [3]]}', "ragged"),
    ],
)
def test_bad_v1_requests_are_refused(body: bytes, message: str) -> None:
    """Malformed v1 bodies raise BadRequest naming the problem."""
    with pytest.raises(BadRequest, match=message):
        v1.decode_request(body, IRIS_INPUT)


def test_datatype_table_covers_the_contract() -> None:
    """FP32, FP64, INT32, INT64 and BOOL (the README's Routes section) all have a numpy dtype and back."""
    for name in ["FP32", "FP64", "INT32", "INT64", "BOOL"]:
        assert DATATYPE_OF[DATATYPES[name]] == name
    assert math.isclose(
        float(
            v2.decode_request(
                b'{"inputs":[{"name":"x","datatype":"FP64","shape":[1],"data":[0.1]}]}'
            ).inputs["x"][0]
        ),
        0.1,
    )


def test_v1_columnar_inputs_answer_columnar_outputs() -> None:
    """TF Serving's columnar form: {"inputs": batch} -> {"outputs": {name: batch}}."""
    request = v1.decode_request(b'{"inputs": [[1, 2, 3, 4], [5, 6, 7, 8]]}', IRIS_INPUT)
    assert request.columnar and request.inputs["input"].tolist() == [[1, 2, 3, 4], [5, 6, 7, 8]]
    named = v1.decode_request(b'{"inputs": {"input": [[1, 2, 3, 4]]}}', IRIS_INPUT)
    assert named.inputs["input"].shape == (1, 4)
    answer = v1.encode_response(
        _result(label=np.array([0, 2]), p=np.array([[0.5], [0.25]], np.float32)), request
    )
    assert orjson.loads(answer) == {"outputs": {"label": [0, 2], "p": [[0.5], [0.25]]}}


@pytest.mark.parametrize("datatype", ["FP16", "FP32", "FP64"])
def test_non_finite_floats_are_json_literals_both_ways(datatype: str) -> None:
    """NaN, Infinity and -Infinity are read from and written as JSON literals, never null."""
    body = (
        b'{"inputs": [{"name": "x", "datatype": "' + datatype.encode() + b'", "shape": [4], '
        b'"data": [-Infinity, Infinity, NaN, 1.5]}]}'
    )
    array = v2.decode_request(body).inputs["x"]
    assert array.dtype == DATATYPES[datatype]
    assert np.isneginf(array[0]) and np.isposinf(array[1]) and np.isnan(array[2])
    encoded, _ = v2.encode_response(_result(y=array), InferRequest(None, {}), "r")
    assert b'"data":[-Infinity,Infinity,NaN,1.5]' in encoded
    data = json.loads(encoded)["outputs"][0]["data"]
    assert np.array_equal(np.array(data, dtype=array.dtype), array, equal_nan=True)
    v1_answer = json.loads(v1.encode_response(_result(y=array), ROWS))["predictions"]
    assert np.array_equal(np.array(v1_answer, dtype=array.dtype), array, equal_nan=True)


@pytest.mark.parametrize(
    ("shape", "data", "message"),
    [
        (
            [2, 4],
            [[1, 2], [3, 4], [5, 6], [7, 8]],
            r"shape is \[2, 4\] but data is nested as \[4, 2\]",
        ),
        ([8], [[1, 2, 3, 4], [5, 6, 7, 8]], r"nested as \[2, 4\]"),
        ([2**62, 0], [], "larger than 2\\*\\*63 bytes"),
        ([2**40, 2**40], [], "larger than"),
        ([1] * 65, [1], "at most 64"),
        ([2, -1], [], "non-negative integers"),
        ([2, 2.0], [], "non-negative integers"),
        ([True, 4], [], "non-negative integers"),
        ([4], [1.0, True, 2.0, 3.0], "mixes booleans"),
        ([2], [True, False], "bool cannot be sent as float32"),
        ([2], [1.0, None], "must be numbers"),
    ],
)
def test_shapes_and_data_that_contradict_are_refused(
    shape: list[object], data: list[object], message: str
) -> None:
    """Nesting must match the shape exactly; overflowing shapes and booleans-as-numbers are 400s."""
    body = orjson.dumps(
        {"inputs": [{"name": "x", "datatype": "FP32", "shape": shape, "data": data}]}
    )
    with pytest.raises(BadRequest, match=message):
        v2.decode_request(body)


def test_flat_data_for_a_nested_shape_stays_valid() -> None:
    """prod(shape) flat values are read row-major, as the protocol says."""
    body = orjson.dumps(
        {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 4], "data": list(range(8))}]}
    )
    assert v2.decode_request(body).inputs["x"].tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            {"outputs": [{"name": "y", "parameters": {"binary_data": "false"}}]},
            "'binary_data' must be true or false",
        ),
        (
            {"outputs": [{"name": "y", "parameters": {"binary_data": 1}}]},
            "'binary_data' must be true or false",
        ),
        (
            {"parameters": {"binary_data_output": "yes"}},
            "'binary_data_output' must be true or false",
        ),
        ({"outputs": [{"name": "y", "parameters": {"classification": 2}}]}, "'classification'"),
        ({"outputs": [{"name": "y"}, {"name": "y"}]}, "requested twice"),
        ({"id": 7}, "'id' must be a string"),
    ],
)
def test_loosely_typed_parameters_are_refused(extra: dict[str, object], message: str) -> None:
    """Flags are booleans, the id a string; unsupported classification is named, not ignored."""
    body = orjson.dumps(
        {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}], **extra}
    )
    with pytest.raises(BadRequest, match=message):
        v2.decode_request(body)


def test_empty_outputs_list_asks_for_every_output() -> None:
    """`outputs: []` means all outputs, as with Triton."""
    body = (
        b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}], "outputs": []}'
    )
    assert v2.decode_request(body).outputs is None


@pytest.mark.parametrize("datatype", ["FP16", "FP32"])
def test_the_largest_finite_float_round_trips(datatype: str) -> None:
    """max as the encoder writes it (3.4028235e+38 for FP32) is read back as max, not refused."""
    biggest = np.array([np.finfo(DATATYPES[datatype]).max, -np.finfo(DATATYPES[datatype]).max])
    encoded, _ = v2.encode_response(
        _result(y=biggest.astype(DATATYPES[datatype])), InferRequest(None, {}), "r"
    )
    written = orjson.loads(encoded)["outputs"][0]["data"]
    body = orjson.dumps(
        {"inputs": [{"name": "x", "datatype": datatype, "shape": [2], "data": written}]}
    )
    assert v2.decode_request(body).inputs["x"].tolist() == biggest.tolist()
    beyond = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "datatype": datatype,
                    "shape": [1],
                    "data": [float(biggest[0]) * 1.001],
                }
            ]
        }
    )
    with pytest.raises(BadRequest, match="out of range"):
        v2.decode_request(beyond)


def test_uint64_beyond_int64_is_exact_in_json() -> None:
    """UINT64 values from 2**63 to 2**64 - 1 are read exactly; past them, or INT64 past 2**63 - 1, out of range."""
    data = [2**64 - 1, 2**63, 0]
    body = orjson.dumps(
        {"inputs": [{"name": "x", "datatype": "UINT64", "shape": [3], "data": data}]}
    )
    array = v2.decode_request(body).inputs["x"]
    assert array.dtype == np.uint64 and array.tolist() == data
    too_big = b'{"inputs": [{"name": "x", "datatype": "INT64", "shape": [1], "data": [9223372036854775808]}]}'
    with pytest.raises(BadRequest, match="out of range for int64"):
        v2.decode_request(too_big)


def test_an_outputs_binary_data_false_overrides_binary_data_output() -> None:
    """Triton: binary_data on an output overrides the request's binary_data_output."""
    body = (
        b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}],'
        b' "parameters": {"binary_data_output": true},'
        b' "outputs": [{"name": "a", "parameters": {"binary_data": false}}, {"name": "b"}]}'
    )
    request = v2.decode_request(body)
    encoded, length = v2.encode_response(
        _result(a=np.array([1.0], np.float32), b=np.array([2.0], np.float32)), request, "r"
    )
    assert length is not None
    a, b = orjson.loads(encoded[:length])["outputs"]
    assert a["data"] == [1.0] and b["parameters"] == {"binary_data_size": 4}


@pytest.mark.parametrize(
    ("body", "header_length", "message"),
    [
        (
            b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1], "parameters": {"binary_data_size": 4}}]}\x00\x00\x80\x3f',
            "113",
            "both 'data' and binary_data_size",
        ),
        (
            b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "parameters": {"binary_data_size": null}}]}',
            None,
            "not a byte count",
        ),
        (b'{"inputs": []}', "+10", "must be an integer"),
    ],
)
def test_ambiguous_binary_requests_are_refused(
    body: bytes, header_length: str | None, message: str
) -> None:
    """Data given twice, a null size or a signed header length: a 400, never one silently chosen."""
    with pytest.raises(BadRequest, match=message):
        v2.decode_request(body, header_length)
