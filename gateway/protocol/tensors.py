"""JSON and binary tensor data to numpy arrays and back, refusing what does not fit.

README "Asking for predictions" lists the rules; each follows Triton's HTTP/REST behaviour:
- JSON data is flat (`prod(shape)` values, row-major) or nested exactly as `shape`;
- booleans are data only for BOOL tensors, and numbers never for BOOL tensors;
- FP16/32/64 non-finite values travel as the JSON literals `NaN`, `Infinity` and `-Infinity`
  both ways (Python's json module and tritonclient read and write them); `null` is not a number;
- a shape is a list of at most 64 non-negative integers whose tensor fits in memory at all
  (numpy's limit: fewer than 2**63 bytes over its non-zero dimensions).
"""

import json
import math
from typing import Any

import numpy as np
import orjson

from gateway.errors import BadRequest
from gateway.types import DATATYPES

# Which numpy kinds of parsed JSON data each datatype kind accepts: integers may go into float
# tensors, but floats never silently truncate into integer tensors, and booleans are not numbers.
_ACCEPTED_KINDS = {"f": "iuf", "i": "iu", "u": "iu", "b": "b"}
MAX_DIMENSIONS = 64  # numpy's
MAX_TENSOR_BYTES = 2**63 - 1  # numpy's (and Triton's int64 byte sizes)
_NUMPY = orjson.OPT_SERIALIZE_NUMPY


def dtype_of(datatype: object, name: str) -> np.dtype:
    """The numpy dtype of an Open Inference Protocol datatype name; BadRequest if unknown."""
    try:
        return DATATYPES[datatype]  # type: ignore[index]
    except (KeyError, TypeError):
        raise BadRequest(
            f"input {name!r}: unsupported datatype {datatype!r}; use one of {', '.join(DATATYPES)}"
        ) from None


_INT = {int}
_NOT_A_SHAPE = "input {name!r}: shape must be a list of non-negative integers"
SHORT_SHAPE = 4  # dimensions: a shape this short is checked one dimension at a time


def check_shape(shape: object, dtype: np.dtype, name: str) -> tuple[int, ...]:
    """A shape as a tuple of non-negative ints whose tensor of `dtype` numpy could hold at all
    (BadRequest otherwise), checked before anything is allocated."""
    if type(shape) is not list:
        raise BadRequest(_NOT_A_SHAPE.format(name=name))
    if len(shape) <= SHORT_SHAPE:  # the usual; a loop is cheaper than the C calls' set-up below
        size = dtype.itemsize
        for dim in shape:
            if type(dim) is not int or dim < 0:  # type() is exact, so booleans fail too
                raise BadRequest(_NOT_A_SHAPE.format(name=name))
            size *= dim or 1
    else:
        # set(map(type, ...)) runs in C; type() is exact, so booleans (an int subclass) fail too.
        if set(map(type, shape)) != _INT or min(shape) < 0:
            raise BadRequest(_NOT_A_SHAPE.format(name=name))
        if len(shape) > MAX_DIMENSIONS:
            raise BadRequest(
                f"input {name!r}: shape has {len(shape)} dimensions, at most 64 allowed"
            )
        size = math.prod(filter(None, shape)) * dtype.itemsize
    if size > MAX_TENSOR_BYTES:
        raise BadRequest(
            f"input {name!r}: shape {shape} describes a tensor larger than 2**63 bytes"
        )
    return tuple(shape)


def from_json(
    data: Any,
    dtype: np.dtype,
    shape: tuple[int, ...] | None,
    name: str,
    may_hold_booleans: bool = True,
) -> np.ndarray:
    """Flat or nested JSON numbers as an array of `dtype`, reshaped to `shape` when given.

    `may_hold_booleans=False` (the JSON text has no `true` or `false`) skips the search for
    booleans mixed into numbers, which numpy would silently read as 1 and 0.
    """
    try:
        parsed = np.asarray(data)
    except ValueError:  # ragged nesting
        raise BadRequest(
            f"input {name!r}: data is ragged; every row must have the same length"
        ) from None
    kind = parsed.dtype.kind
    if kind == "f" and dtype.kind in "iu" and parsed.size:
        parsed = _big_integers(data, dtype, name)  # numpy reads ints past int64 as floats
        kind = parsed.dtype.kind
    if kind not in _ACCEPTED_KINDS[dtype.kind] and parsed.size:
        raise BadRequest(_wrong_data(name, parsed, dtype))
    if may_hold_booleans and kind in "iuf" and _holds_booleans(data):
        raise BadRequest(f"input {name!r}: data mixes booleans into {dtype.name} numbers")
    _check_range(parsed, dtype, name)
    array = parsed.astype(dtype, copy=False)
    if shape is None:
        return array
    if array.ndim > 1 and array.size and array.shape != shape:  # [[]] cannot nest deeper
        raise BadRequest(
            f"input {name!r}: shape is {list(shape)} but data is nested as "
            f"{list(array.shape)}; nest it exactly as the shape, or send it flat"
        )
    return _reshape(array, shape, name)


def from_bytes(raw: bytes, dtype: np.dtype, shape: tuple[int, ...], name: str) -> np.ndarray:
    """Raw little-endian tensor bytes (Triton binary data extension) as an array."""
    expected = math.prod(shape) * dtype.itemsize
    if len(raw) != expected:
        raise BadRequest(
            f"input {name!r}: binary data has {len(raw)} bytes, shape {list(shape)} of "
            f"{dtype.name} needs {expected}"
        )
    if dtype.kind == "b" and raw and np.frombuffer(raw, np.uint8).max() > 1:  # 1 byte: 0 or 1
        raise BadRequest(f"input {name!r}: BOOL binary data holds bytes other than 0 and 1")
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def dumps(document: Any) -> bytes:
    """`document` (dicts, lists, numbers, numpy arrays) as JSON, with non-finite floats as the
    literals NaN, Infinity and -Infinity, which orjson would write as null."""
    encoded = orjson.dumps(document, option=_NUMPY)
    # A C-level search (non-finite values are rare). find, not `in`: bytes' `in` first tries its
    # argument as an integer, raising and clearing a TypeError (docs/lone-request.md).
    if encoded.find(b"null") < 0:
        return encoded
    return orjson.dumps(_literal_non_finite(document), option=_NUMPY)


def _literal_non_finite(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _literal_non_finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_literal_non_finite(item) for item in value]
    is_float = isinstance(value, float | np.floating) or (
        isinstance(value, np.ndarray) and value.dtype.kind == "f"
    )
    if is_float and not np.isfinite(value).all():
        return orjson.Fragment(json.dumps(np.asarray(value).tolist(), separators=(",", ":")))
    return value


def _big_integers(data: Any, dtype: np.dtype, name: str) -> np.ndarray:
    """`data` as exact integers when every value is an integer (as large as UINT64's 2**64 - 1
    or beyond, checked against the range), else as numpy parsed it (floats: refused)."""
    exact = np.asarray(data, dtype=object)
    if not all(type(value) is int for value in exact.flat):
        return np.asarray(data)
    low, high = _limits(dtype)
    if exact.min() < low or exact.max() > high:
        raise BadRequest(f"input {name!r}: data out of range for {dtype.name}")
    return exact.astype(dtype)


def _holds_booleans(data: Any) -> bool:
    if isinstance(data, list):
        return any(map(_holds_booleans, data))
    return isinstance(data, bool)


def _wrong_data(name: str, parsed: np.ndarray, dtype: np.dtype) -> str:
    if parsed.dtype.kind in "OUS":
        return (
            f"input {name!r}: data must be numbers (or booleans for BOOL), not strings or objects"
        )
    return f"input {name!r}: data of kind {parsed.dtype.name} cannot be sent as {dtype.name}"


def _limits(dtype: np.dtype) -> tuple[int, int] | tuple[float, float]:
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return int(info.min), int(info.max)  # exact: a float bound would round 2**63 - 1 up
    # The largest value that rounds to a finite number, not inf: below max + half an ulp (at
    # it, the tie goes to the even neighbour, inf). The encoder writes max as the shortest
    # decimal that rounds back to it (3.4028235e+38 for FP32), which is above max itself.
    finfo = np.finfo(dtype)
    top = float(finfo.max) + float(finfo.max - np.nextafter(finfo.max, dtype.type(0))) / 2
    high = float(np.nextafter(top, 0.0))
    return -high, high


# JSON data parses as bool, int64, uint64 or float64 arrays; a cast of a value beyond the target's
# range wraps (integers) or becomes inf (floats) without a word. The range of each (parsed,
# target) pair where that can happen, so the common pairs that cannot skip the check.
_LIMITS = {
    (np.dtype(parsed), dtype): _limits(dtype)
    for parsed in (np.int64, np.uint64, np.float64)
    for dtype in DATATYPES.values()
    if dtype.kind != "b" and not np.can_cast(parsed, dtype)
}


def _check_range(parsed: np.ndarray, dtype: np.dtype, name: str) -> None:
    limits = _LIMITS.get((parsed.dtype, dtype))
    if limits is None or not parsed.size:
        return
    low, high = limits
    # Every |value| is at most the Euclidean norm: one BLAS call clears nearly all float data
    # (ufunc reductions cost several times more). Not for integers: their dot product wraps.
    if parsed.dtype.kind == "f":
        if np.vdot(parsed, parsed) <= high * high:
            return
        if dtype.kind == "f":  # NaN and infinities fit any float type as they are
            parsed = parsed[np.isfinite(parsed)]
            if not parsed.size:
                return
    if parsed.min() < low or parsed.max() > high:
        raise BadRequest(f"input {name!r}: data out of range for {dtype.name}")


def _reshape(array: np.ndarray, shape: tuple[int, ...], name: str) -> np.ndarray:
    if array.size != math.prod(shape):
        raise BadRequest(
            f"input {name!r}: shape {list(shape)} needs {math.prod(shape)} values, "
            f"data has {array.size}"
        )
    return array.reshape(shape)
