"""One onnxruntime session per variant, with the input checks its own metadata allows."""

import logging
import math
import time
from operator import mul
from pathlib import Path
from typing import NamedTuple

import numpy as np
import onnxruntime as ort

from gateway.errors import BadRequest, ConfigError
from gateway.types import DATATYPE_OF, DATATYPES, TensorSpec

log = logging.getLogger(__name__)

_ORT_TYPES = {
    f"tensor({name})": datatype
    for name, datatype in [
        ("bool", "BOOL"),
        ("uint8", "UINT8"),
        ("uint16", "UINT16"),
        ("uint32", "UINT32"),
        ("uint64", "UINT64"),
        ("int8", "INT8"),
        ("int16", "INT16"),
        ("int32", "INT32"),
        ("int64", "INT64"),
        ("float16", "FP16"),
        ("float", "FP32"),
        ("double", "FP64"),
    ]
}
WARMUP_RUNS = 3  # at most: one-off costs (allocations, kernel choice) are paid by the first
# Warm-up stops once its runs took this long: a model that slow is warm after its first run,
# its one-off costs a small part of it, and each further run would delay start-up and reloads.
WARMUP_BUDGET_S = 0.05
COST_SMOOTHING = 0.1  # weight of the newest run in the running estimate of seconds per row


def session_options() -> ort.SessionOptions:
    """Options for low latency on a small CPU.

    One intra-op thread: the models we serve are small, so splitting one run across threads costs
    more in synchronisation than it saves, and concurrency comes from running several requests at
    once on the runner's threads. No spinning: idle spinning threads would take the core the event
    loop needs. Full graph optimisation is done once, at load.
    """
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    options.log_severity_level = 3
    return options


class ModelSession:
    """A loaded, warmed-up variant: its tensor specs and a thread-safe `run`."""

    def __init__(
        self, model: str, variant: str, path: Path, same_file: "ModelSession | None" = None
    ) -> None:
        """Load `path`, or share the onnxruntime session of `same_file`, loaded from the same
        file: one copy of the weights in memory and in the CPU's caches (onnxruntime sessions
        are safe to run from several threads at once)."""
        self.model = model
        self.variant = variant
        self.path = path
        where = f"model {model!r}, variant {variant!r} ({path})"
        self._session: ort.InferenceSession
        if same_file is not None:
            self._session = same_file._session
        else:
            try:
                self._session = ort.InferenceSession(
                    str(path), sess_options=session_options(), providers=["CPUExecutionProvider"]
                )
            except Exception as exc:  # onnxruntime raises several unrelated types for a bad file
                raise ConfigError(f"{where}: ONNX file failed to load: {exc}") from None
        self.inputs = tuple(_spec(arg, where, "input") for arg in self._session.get_inputs())
        self.outputs = tuple(_spec(arg, where, "output") for arg in self._session.get_outputs())
        self.input_specs = {spec.name: spec for spec in self.inputs}
        # InferenceSession.run only checks, in Python, what `validate` has already checked (input
        # names; no device-bound values, no graph capture) before calling its C++ session: 3% of a
        # small request. Call the C++ session directly, if this onnxruntime still exposes it.
        self._run = getattr(self._session, "_sess", self._session).run
        self._expected = {spec.name: _Expected.of(spec) for spec in self.inputs}
        self.output_specs = {spec.name: spec for spec in self.outputs}
        self.output_names = [spec.name for spec in self.outputs]
        self.seconds_per_row = math.inf  # unknown until warm-up has measured it

    def expected_seconds(self, rows: int) -> float:
        """A pessimistic guess of how long a run of `rows` rows takes, from past runs."""
        return self.seconds_per_row * max(rows, 1)

    def record_run(self, seconds: float, rows: int, exact: bool = True) -> None:
        """Fold one run's duration into the per-row cost estimate.

        A run timed in a worker thread is not `exact`: its time includes waiting for the GIL
        after onnxruntime returns (up to the 5 ms switch interval when the event loop is busy),
        so it may only lower the estimate, never raise it.
        """
        per_row = seconds / max(rows, 1)
        if self.seconds_per_row == math.inf:
            self.seconds_per_row = per_row
        elif exact or per_row < self.seconds_per_row:
            self.seconds_per_row += COST_SMOOTHING * (per_row - self.seconds_per_row)

    def validate(self, inputs: dict[str, np.ndarray]) -> None:
        """Raise BadRequest unless `inputs` has every model input with its datatype and shape."""
        if inputs.keys() != self._expected.keys():
            _name_mismatch(inputs, self.input_specs)
        for name, array in inputs.items():
            dtype, mask, masked = self._expected[name]
            if array.dtype != dtype:
                raise BadRequest(
                    f"input {name!r} has datatype {DATATYPE_OF.get(array.dtype, array.dtype)}, "
                    f"the model expects {self.input_specs[name].datatype}"
                )
            shape = array.shape  # a new tuple at every read
            if len(shape) != len(mask) or tuple(map(mul, shape, mask)) != masked:
                raise BadRequest(
                    f"input {name!r} has shape {list(shape)}, the model expects "
                    f"{list(self.input_specs[name].shape)} (-1: any size)"
                )

    def run(
        self,
        inputs: dict[str, np.ndarray],
        output_names: list[str],
        options: ort.RunOptions | None = None,
    ) -> dict[str, np.ndarray]:
        """Run the model (releases the GIL); call it from a worker thread, not the event loop."""
        results = self._run(output_names, inputs, options)
        return dict(zip(output_names, results, strict=True))

    def check_batching(self, max_batch_size: int) -> None:
        """ConfigError unless requests can be joined on the first dimension of every input and
        split on the first dimension of every output (README "Batching and admission")."""
        where = f"model {self.model!r}, variant {self.variant!r}: max_batch_size {max_batch_size}"
        for spec in self.inputs:
            if not spec.shape or spec.shape[0] != -1:
                raise ConfigError(
                    f"{where} needs a dynamic first (batch) dimension on every input; input "
                    f"{spec.name!r} has shape {list(spec.shape)}"
                )
        feeds = {
            spec.name: np.zeros([2, *(1 if dim < 0 else dim for dim in spec.shape[1:])], spec.dtype)
            for spec in self.inputs
        }
        for name, array in self.run(feeds, self.output_names).items():
            if array.ndim == 0 or array.shape[0] != 2:
                raise ConfigError(
                    f"{where}: output {name!r} does not keep the batch dimension first (2 rows in "
                    f"gave shape {list(array.shape)}), so a batch's answers cannot be split"
                )

    def warm_up(self) -> None:
        """Run a batch of zeros up to WARMUP_RUNS times, until WARMUP_BUDGET_S is spent, so
        the first real request pays no one-off costs."""
        feeds = {
            spec.name: np.zeros([1 if dim < 0 else dim for dim in spec.shape], spec.dtype)
            for spec in self.inputs
        }
        timings = []
        for _ in range(WARMUP_RUNS):
            started = time.perf_counter()
            self.run(feeds, self.output_names)
            timings.append(time.perf_counter() - started)
            if sum(timings) >= WARMUP_BUDGET_S:
                break
        # The first run pays one-off allocations: the fastest is the best first estimate.
        self.seconds_per_row = min(timings)


def _spec(arg: ort.NodeArg, where: str, kind: str) -> TensorSpec:
    datatype = _ORT_TYPES.get(arg.type)
    if datatype is None:
        raise ConfigError(
            f"{where}: {kind} {arg.name!r} has type {arg.type}; only tensors of "
            f"{', '.join(DATATYPES)} can be served (export classifiers without ZipMap)"
        )
    shape = tuple(dim if isinstance(dim, int) and dim >= 0 else -1 for dim in arg.shape)
    return TensorSpec(arg.name, datatype, shape)


class _Expected(NamedTuple):
    """What an input must be, in a form checked with C-level operations only: a shape fits when
    multiplying it by `mask` (0 for a dynamic dimension, else 1) gives `masked` (0 for a dynamic
    dimension, else its size)."""

    dtype: np.dtype
    mask: tuple[int, ...]
    masked: tuple[int, ...]

    @classmethod
    def of(cls, spec: TensorSpec) -> "_Expected":
        mask = tuple(0 if dim < 0 else 1 for dim in spec.shape)
        return cls(spec.dtype, mask, tuple(map(mul, spec.shape, mask)))


def _name_mismatch(inputs: dict[str, np.ndarray], specs: dict[str, TensorSpec]) -> None:
    unknown = sorted(inputs.keys() - specs.keys())
    missing = sorted(specs.keys() - inputs.keys())
    if unknown:
        raise BadRequest(f"unknown input {unknown[0]!r}; the model's inputs are {sorted(specs)}")
    raise BadRequest(f"missing input {missing[0]!r}; the model's inputs are {sorted(specs)}")
