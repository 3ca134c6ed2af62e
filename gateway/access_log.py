"""Optional structured access log: one JSON line per inference request, written off the loop.

Enabled by `access_log: true` in the config. The request only enqueues a small dict; a writer
thread serialises and writes the lines to standard output, flushing whenever the queue runs dry.
When disabled, the request path pays one `is None` check.
"""

import queue
import sys
import threading
import time
from typing import Any, BinaryIO

import orjson

_STOP = None


class AccessLog:
    """Writes access records as JSON lines from a background thread."""

    def __init__(self, output: BinaryIO | None = None) -> None:
        self._output = output or sys.stdout.buffer
        self._queue: queue.SimpleQueue[dict[str, Any] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._write, name="gateway-access-log", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Write what is queued, then end the writer thread."""
        self._queue.put(_STOP)
        self._thread.join(timeout=5)

    def record(
        self, request_id: str, model: str, variant: str, role: str, status: int, seconds: float
    ) -> None:
        """Queue one line; never blocks on I/O."""
        self._queue.put(
            {
                "ts": round(time.time(), 3),
                "request_id": request_id,
                "model": model,
                "variant": variant,
                "role": role,
                "status": status,
                "duration_ms": round(seconds * 1000, 3),
            }
        )

    def _write(self) -> None:
        while (fields := self._queue.get()) is not _STOP:
            self._output.write(orjson.dumps(fields, option=orjson.OPT_APPEND_NEWLINE))
            if self._queue.empty():
                self._output.flush()
        self._output.flush()
