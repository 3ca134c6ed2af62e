"""Small frozen types shared by the protocol, runtime and routing layers."""

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

# Open Inference Protocol datatypes and the numpy dtypes they travel as (README "Routes").
DATATYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
}
DATATYPE_OF: dict[np.dtype, str] = {dtype: name for name, dtype in DATATYPES.items()}


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """A model input or output as the protocol describes it: -1 marks a dynamic dimension."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    @property
    def dtype(self) -> np.dtype:
        return DATATYPES[self.datatype]

    def as_metadata(self) -> dict[str, object]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


# Per-request values are NamedTuples: built in C, several times cheaper than frozen dataclasses,
# and just as immutable.


class RequestedOutput(NamedTuple):
    """An output the client asked for, and whether it wants it as Triton binary data (None:
    as the request's `binary_data_output` says)."""

    name: str
    binary: bool | None = None


class InferRequest(NamedTuple):
    """A decoded inference request: inputs straight as numpy arrays, ready for the runtime."""

    id: str | None
    inputs: dict[str, np.ndarray]
    outputs: tuple[RequestedOutput, ...] | None = None
    binary_outputs: bool = False
    columnar: bool = False  # v1 only: answer `{"outputs"}` (TF Serving's columnar format)
    timeout_s: float | None = None  # v2 `parameters.timeout` (Triton's, sent in microseconds)


class InferResult(NamedTuple):
    """What one variant answered, and how it was chosen (README: the x-gateway-* headers)."""

    model: str
    variant: str
    role: str
    revision: int
    outputs: dict[str, np.ndarray]
    specs: dict[str, TensorSpec]
