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
    if dtype.kind in "iu":
        _check_range(parsed, dtype, name)
        array = parsed.astype(dtype, copy=False)
    else:
        array = _narrow_floats(parsed, dtype, name)
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


def _narrow_floats(parsed: np.ndarray, dtype: np.dtype, name: str) -> np.ndarray:
    # JSON numbers parse as float64 (or int64); a value beyond the target's range would become
    # inf silently, so the cast is told to raise instead.
    try:
        with np.errstate(over="raise"):
            return parsed.astype(dtype, copy=False)
    except FloatingPointError:
        raise BadRequest(f"input {name!r}: data out of range for {dtype.name}") from None


def _check_range(parsed: np.ndarray, dtype: np.dtype, name: str) -> None:
    if parsed.size and parsed.dtype.kind in "iu":
        info = np.iinfo(dtype)
        if parsed.min() < info.min or parsed.max() > info.max:
            raise BadRequest(f"input {name!r}: data out of range for {dtype.name}")


def _reshape(array: np.ndarray, shape: tuple[int, ...], name: str) -> np.ndarray:
    if array.size != math.prod(shape):
        raise BadRequest(
            f"input {name!r}: shape {list(shape)} needs {math.prod(shape)} values, "
            f"data has {array.size}"
        )
    return array.reshape(shape)
