"""onnxruntime sessions: load, warm up, validate inputs, queue, batch and run off the event loop."""

from gateway.runtime.batcher import Held, QueueObserver, QueuePolicy, Scheduler
from gateway.runtime.repository import ModelRepository, load_repository
from gateway.runtime.runner import Runner, batch_rows, run_checked
from gateway.runtime.session import ModelSession

__all__ = [
    "Held",
    "ModelRepository",
    "ModelSession",
    "QueueObserver",
    "QueuePolicy",
    "Runner",
    "Scheduler",
    "batch_rows",
    "load_repository",
    "run_checked",
]
