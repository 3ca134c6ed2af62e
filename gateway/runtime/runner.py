"""Run sessions on the event loop when the run is known to be tiny, else on a thread."""

import asyncio
import contextlib
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnxruntime as ort
from onnxruntime.capi.onnxruntime_pybind11_state import Fail, InvalidArgument

from gateway.errors import InferenceTimeout, ModelRefused
from gateway.runtime.session import ModelSession

Outputs = dict[str, np.ndarray]
RUNNER_NICE = 10  # the runner threads' nice value: the event loop (0) comes first


class Runner:
    """Runs model sessions in worker threads; onnxruntime releases the GIL while it computes.

    The pool has one thread per usable core: that bounds how many runs compete for the CPU at
    once (each session uses one intra-op thread). Requests beyond it wait in their variant's
    queue (`gateway.runtime.batcher`), where their time counts against their deadline.

    Handing a run to a thread and back costs tens of microseconds of context switches, more than
    a small model's whole run. So a run whose expected duration (from the variant's own past runs,
    per row of the batch) is under `inline_below_s` runs on the event loop itself: it stalls other
    requests for less than the hand-off would have cost them. 0 sends every run to a thread.
    The threads run at a lower priority than the event loop (`RUNNER_NICE`).
    """

    def __init__(self, threads: int | None = None, inline_below_s: float = 0.0) -> None:
        self.threads = threads or _usable_cores()
        self.inline_below_s = inline_below_s
        self._pool = ThreadPoolExecutor(
            self.threads, thread_name_prefix="gateway-infer", initializer=_yield_to_event_loop
        )

    def inline(self, session: ModelSession, rows: int) -> bool:
        """Whether a run of `rows` rows is expected to be short enough to run on the loop."""
        return session.expected_seconds(rows) < self.inline_below_s

    def run_inline(
        self, session: ModelSession, inputs: Outputs, output_names: list[str], rows: int
    ) -> tuple[Outputs, float]:
        """The outputs and the run's own duration, run on the calling (event-loop) thread."""
        started = time.perf_counter()  # as _timed_run, one call fewer on the event loop
        outputs = run_checked(session, inputs, output_names)
        seconds = time.perf_counter() - started
        session.record_run(seconds, rows)
        return outputs, seconds

    async def run_threaded(
        self,
        session: ModelSession,
        inputs: Outputs,
        output_names: list[str],
        timeout: float,
        rows: int,
    ) -> tuple[Outputs, float]:
        """The outputs and the run's own duration, run on a worker thread; InferenceTimeout
        after `timeout` seconds, when onnxruntime is told to stop the run."""
        options = ort.RunOptions()
        future = asyncio.get_running_loop().run_in_executor(
            self._pool, _timed_run, session, inputs, output_names, options, rows
        )
        try:
            async with asyncio.timeout(max(timeout, 0.0)):
                return await future
        except TimeoutError:
            # Tell onnxruntime to stop at the next node, so the thread is freed for others.
            options.terminate = True
            raise InferenceTimeout(
                f"inference of model {session.model!r} variant {session.variant!r} did not end "
                "within the request timeout"
            ) from None

    def close(self) -> None:
        """Stop accepting runs and wait for the ones in flight."""
        self._pool.shutdown(wait=True, cancel_futures=True)


def _timed_run(
    session: ModelSession,
    inputs: Outputs,
    output_names: list[str],
    options: ort.RunOptions | None,
    rows: int,
) -> tuple[Outputs, float]:
    started = time.perf_counter()
    outputs = run_checked(session, inputs, output_names, options)
    seconds = time.perf_counter() - started
    session.record_run(seconds, rows, exact=options is None)  # options: run in a worker thread
    return outputs, seconds


def run_checked(
    session: ModelSession,
    inputs: Outputs,
    output_names: list[str],
    options: ort.RunOptions | None = None,
) -> Outputs:
    """`session.run`, with the model's own refusal of these inputs as a BadRequest."""
    try:
        return session.run(inputs, output_names, options)
    except (InvalidArgument, Fail) as exc:
        # The inputs matched the model's declared metadata but not what its nodes accept
        # (data-dependent shapes): the request's fault, as in Triton, not the server's.
        raise ModelRefused(f"the model failed on these inputs: {_first_line(exc)}") from None


def _usable_cores() -> int:
    """The cores this process may run on (a container's or taskset's limit), at least 1."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def batch_rows(inputs: Outputs) -> int:
    """The batch rows of a request: its first input's first dimension (1 for a scalar)."""
    for array in inputs.values():
        return int(array.shape[0]) if array.ndim else 1
    return 1


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0]


def _yield_to_event_loop() -> None:
    """Run the calling thread at `RUNNER_NICE` (Linux: a thread's own nice value).

    Where the runner's threads and the event loop share a core, the loop's work per request is
    short and decides how soon every caller hears back, probes included; a model run is long and
    the same whoever waits. Under overload on one core, with both at the same priority, the loop
    got half the core, lagged behind reading requests and answered refusals in tens of ms. Lower
    priority only orders them when both want the core: an idle loop leaves a run all of it."""
    with contextlib.suppress(AttributeError, OSError):  # not Linux, or not allowed: as it is
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), RUNNER_NICE)
