"""Turn JSON and binary tensor data into numpy arrays, refusing what does not fit (CONTRACT §2)."""

import math
from typing import Any

import numpy as np

from gateway.errors import BadRequest
from gateway.types import DATATYPES

# Which numpy kinds of parsed JSON data each datatype kind accepts: integers may go into float
# tensors, but floats never silently truncate into integer tensors.
_ACCEPTED_KINDS = {"f": "biuf", "i": "iu", "u": "iu", "b": "b"}


def dtype_of(datatype: object, name: str) -> np.dtype:
    """The numpy dtype of an Open Inference Protocol datatype name; BadRequest if unknown."""
    try:
        return DATATYPES[datatype]  # type: ignore[index]
    except (KeyError, TypeError):
        raise BadRequest(
            f"input {name!r}: unsupported datatype {datatype!r}; use one of {', '.join(DATATYPES)}"
        ) from None


_INT = {int}


def check_shape(shape: object, name: str) -> tuple[int, ...]:
    """A shape as a tuple of non-negative ints; BadRequest otherwise."""
    # set(map(type, ...)) runs in C; type() is exact, so booleans (an int subclass) fail too.
    if type(shape) is not list or (shape and (set(map(type, shape)) != _INT or min(shape) < 0)):
        raise BadRequest(f"input {name!r}: shape must be a list of non-negative integers")
    return tuple(shape)


def from_json(data: Any, dtype: np.dtype, shape: tuple[int, ...] | None, name: str) -> np.ndarray:
    """Flat or nested JSON numbers as an array of `dtype`, reshaped to `shape` when given."""
    try:
        parsed = np.asarray(data)
    except ValueError:  # ragged nesting
        raise BadRequest(
            f"input {name!r}: data is ragged; every row must have the same length"
        ) from None
    if parsed.dtype.kind not in _ACCEPTED_KINDS[_kind(dtype)] and parsed.size:
        raise BadRequest(_wrong_data(name, parsed, dtype))
    _check_range(parsed, dtype, name)
    array = parsed.astype(dtype, copy=False)
    return array if shape is None else _reshape(array, shape, name)


def from_bytes(raw: bytes, dtype: np.dtype, shape: tuple[int, ...], name: str) -> np.ndarray:
    """Raw little-endian tensor bytes (Triton binary data extension) as an array."""
    expected = math.prod(shape) * dtype.itemsize
    if len(raw) != expected:
        raise BadRequest(
            f"input {name!r}: binary data has {len(raw)} bytes, shape {list(shape)} of "
            f"{dtype.name} needs {expected}"
        )
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def _kind(dtype: np.dtype) -> str:
    return "i" if dtype.kind == "u" else dtype.kind


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
    finfo = np.finfo(dtype)
    return float(finfo.min), float(finfo.max)


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
    if parsed.dtype.kind == "f" and np.vdot(parsed, parsed) <= high * high:
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
