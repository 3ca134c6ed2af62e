"""Run sessions off the event loop on a fixed pool of threads, with a deadline."""

import asyncio
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnxruntime as ort
from onnxruntime.capi.onnxruntime_pybind11_state import Fail, InvalidArgument

from gateway.errors import BadRequest, InferenceTimeout
from gateway.runtime.session import ModelSession


class Runner:
    """Runs model sessions in worker threads; onnxruntime releases the GIL while it computes.

    The pool has one thread per core: that bounds how many runs compete for the CPU at once (each
    session uses one intra-op thread), and requests beyond it wait in the pool's queue, where
    their time counts against the request timeout.
    """

    def __init__(self, threads: int | None = None) -> None:
        self.threads = threads or os.cpu_count() or 1
        self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="gateway-infer")

    async def run(
        self,
        session: ModelSession,
        inputs: dict[str, np.ndarray],
        output_names: list[str],
        timeout: float,
    ) -> dict[str, np.ndarray]:
        """Run `session` in a worker thread; InferenceTimeout after `timeout` seconds."""
        options = ort.RunOptions()
        future = asyncio.get_running_loop().run_in_executor(
            self._pool, session.run, inputs, output_names, options
        )
        try:
            async with asyncio.timeout(timeout):
                return await future
        except TimeoutError:
            # Tell onnxruntime to stop at the next node, so the thread is freed for others.
            options.terminate = True
            raise InferenceTimeout(
                f"inference of model {session.model!r} variant {session.variant!r} took longer "
                f"than the request timeout of {timeout} s"
            ) from None
        except (InvalidArgument, Fail) as exc:
            # The inputs matched the model's declared metadata but not what its nodes accept
            # (data-dependent shapes): the request's fault, as in Triton, not the server's.
            raise BadRequest(f"the model failed on these inputs: {_first_line(exc)}") from None

    def close(self) -> None:
        """Stop accepting runs and wait for the ones in flight."""
        self._pool.shutdown(wait=True, cancel_futures=True)


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0]
