"""Graceful shutdown: on SIGTERM, drain for `drain_s`, then uvicorn's own graceful shutdown.

Why a drain. Kubernetes sends SIGTERM and takes the pod out of its Service's endpoints at the
same moment, and the two race: kube-proxy, ingress controllers and cloud load balancers learn of
the removal a little later and keep sending new requests meanwhile (Kubernetes docs, "Pod
Lifecycle", Termination of Pods). A server that stops accepting at SIGTERM refuses those. So for
`drain_s` seconds the gateway keeps serving every route as usual, but `/v2/health/ready` and the
model ready routes answer 503 (balancers that poll readiness drop it too) and every answer
carries `Connection: close` (kept-alive clients reconnect, through their balancer, to another
replica; GatewayHttpProtocol). Then uvicorn's graceful shutdown (`Server.shutdown`): it stops
accepting, gives requests in flight `shutdown_timeout_s` to finish, and runs the lifespan's
shutdown, which flushes the shadow log; the process exits 0.

How. uvicorn (0.54, `Server.capture_signals`) handles SIGINT and SIGTERM itself: either sets
`should_exit` at once, and after its shutdown it raises the signal again, so a server stopped by
SIGTERM ended killed by it (status 143). The lifespan runs in uvicorn's main thread after uvicorn
installed its handlers, and takes SIGTERM over (`take_over_sigterm`): the handler it finds is a
method of uvicorn's `Server`, which is how the drain reaches the server to end it, by setting
`should_exit` as uvicorn's own handler does, without the signal recorded to be raised again, so
the process exits 0. SIGINT stays uvicorn's: Ctrl-C stops at once, as before. With `--workers
N`, uvicorn's supervisor answers its SIGTERM by sending SIGTERM to every worker; each drains and
exits 0, and so does the supervisor.

During the drain, SIGINT starts the shutdown at once (uvicorn's handler; a second SIGINT also
cancels the requests in flight, uvicorn's force exit). A second SIGTERM changes nothing: with
`kill` on a process group, or systemd's default KillMode, a worker gets SIGTERM both directly and
from its supervisor, and must still drain.
"""

import asyncio
import logging
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

import uvicorn

from gateway.http.protocol import GatewayHttpProtocol

log = logging.getLogger(__name__)


class Drain:
    """Whether this process is draining, and the SIGTERM handler that starts the drain."""

    def __init__(self, drain_s: float) -> None:
        self.drain_s = drain_s
        self.draining = False
        self._server: uvicorn.Server | None = None
        self._uvicorn_handler: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._at_end: list[Callable[[], None]] = []

    def at_end(self, callback: Callable[[], None]) -> None:
        """Call `callback` when the drain is over, as uvicorn is told to stop accepting."""
        self._at_end.append(callback)

    @property
    def server(self) -> uvicorn.Server | None:
        """The uvicorn Server serving the app, once SIGTERM is taken over from it."""
        return self._server

    def take_over_sigterm(self) -> bool:
        """Handle SIGTERM here instead of in uvicorn's Server, from the running event loop.

        False, and SIGTERM left as it is, when the app is not served by uvicorn from the main
        thread (in-process tests, another ASGI server): nothing here could end the drain.
        """
        if threading.current_thread() is not threading.main_thread():
            return False
        handler = signal.getsignal(signal.SIGTERM)
        server = getattr(handler, "__self__", None)
        if not isinstance(server, uvicorn.Server):
            log.warning("SIGTERM is not uvicorn's to take over: no drain on SIGTERM")
            return False
        self._server, self._uvicorn_handler = server, handler
        self._loop = asyncio.get_running_loop()
        signal.signal(signal.SIGTERM, self._on_sigterm)
        return True

    def give_back_sigterm(self) -> None:
        """Hand SIGTERM back to uvicorn (end of the lifespan); stop a drain still running."""
        if self._timer is not None:
            self._timer.cancel()
        if self._server is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._uvicorn_handler)
        self._server = None

    def _on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        # A Python signal handler runs between two bytecodes, maybe inside the event loop's own
        # code: it only queues the work for the loop, as asyncio's own signal handling does.
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._begin)

    def _begin(self) -> None:
        server = self._server
        if server is None or server.should_exit or self.draining:
            return  # already shutting down (SIGINT came first) or draining: nothing to add
        self.draining = True
        log.info(
            "SIGTERM: draining for %g s (ready answers 503, connections close after each "
            "answer), then shutting down",
            self.drain_s,
        )
        # Requests already in flight answer with Connection: close too; later ones are marked
        # when their head arrives (GatewayHttpProtocol.on_headers_complete).
        for connection in list(server.server_state.connections):
            if isinstance(connection, GatewayHttpProtocol):
                connection.close_after_response()
        assert self._loop is not None
        self._timer = self._loop.call_later(self.drain_s, self._end)

    def _end(self) -> None:
        self._timer = None
        if self._server is not None and not self._server.should_exit:
            log.info("drain over: shutting down")
            for callback in self._at_end:
                callback()
            self._server.should_exit = True  # what uvicorn's handler does, minus the re-raise
