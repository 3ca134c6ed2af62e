"""Accepting every waiting connection at once, however busy the event loop is.

uvloop's server accepts through libuv, which since version 1.45 accepts one connection per event
loop iteration (libuv pull request 3696, "unix: don't accept() connections in a loop"). A loop
iteration runs every callback that is ready, and under load that is many requests' work: at four
times the heavy model's capacity iterations took 5 to 15 ms, so the gateway accepted about 100
connections a second while clients opened hundreds more. They waited in the kernel's accept
queue for seconds, their requests unread, where neither the admission queue nor the deadline can
see them; so did every health probe and Prometheus scrape, which open a new connection each
(docs/benchmarks.md, overload).

So the gateway also watches a duplicate of each listening socket and, whenever one is readable,
accepts everything waiting there (up to `ACCEPT_AT_ONCE`), handing each connection to the loop
with `connect_accepted_socket` and uvicorn's own protocol, as uvicorn's server would. uvloop's
server stays as it is; the two take turns on the same accept queue. The duplicates close when the
drain ends (gateway.http.drain), as uvicorn closes its own sockets, or at the first connection
after uvicorn began to shut down otherwise (SIGINT): the socket stops listening with uvicorn's.
"""

import asyncio
import functools
import logging
import socket
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import uvicorn

log = logging.getLogger(__name__)

ACCEPT_RETRY_S = 1.0  # after a failed accept (out of file descriptors): asyncio's own delay
ACCEPT_AT_ONCE = 64  # connections accepted in one callback at most: requests are read in between


class Acceptor:
    """Accepts all waiting connections of a uvicorn Server's sockets (see the module docstring).
    Installed once the server listens (`install`, on its first connection); `close` undoes it."""

    def __init__(self) -> None:
        self.installed = False
        self._server: uvicorn.Server | None = None
        self._listening: list[socket.socket] = []

    def install(self, server: "uvicorn.Server | None") -> None:
        """Watch duplicates of `server`'s listening sockets; nothing when `server` is None (not
        served by uvicorn from its main thread) or has no sockets (yet)."""
        self.installed = True
        if server is None or server.should_exit:
            return
        loop = asyncio.get_running_loop()
        protocol_class: Any = server.config.http_protocol_class  # uvicorn's protocol, or ours
        factory = functools.partial(
            protocol_class,
            config=server.config,
            server_state=server.server_state,
            app_state=server.lifespan.state,
        )
        for listener in getattr(server, "servers", []):
            for sock in listener.sockets:
                if sock.type != socket.SOCK_STREAM or sock.family not in (
                    socket.AF_INET,
                    socket.AF_INET6,
                ):
                    continue
                duplicate = socket.socket(fileno=sock.dup().detach())
                duplicate.setblocking(False)
                self._listening.append(duplicate)
                self._watch(loop, duplicate, factory)
        self._server = server

    def _accept(
        self,
        loop: asyncio.AbstractEventLoop,
        listening: socket.socket,
        factory: functools.partial[asyncio.Protocol],
    ) -> None:
        if self._server is None or self._server.should_exit:
            self.close()  # uvicorn is shutting down: it accepts no more, and neither do we
            return
        for _ in range(ACCEPT_AT_ONCE):
            try:
                connection, _ = listening.accept()
            except (BlockingIOError, InterruptedError):
                return  # none left (or uvloop's server took it)
            except OSError as exc:  # out of file descriptors, say
                # The socket stays readable: watched at once again, it would spin. Wait, as
                # asyncio's own server does; uvloop's server meanwhile accepts as it can.
                log.warning("accepting a connection failed: %s (retrying in %g s)", exc,
                            ACCEPT_RETRY_S)  # fmt: skip
                loop.remove_reader(listening.fileno())
                loop.call_later(ACCEPT_RETRY_S, self._watch, loop, listening, factory)
                return
            connection.setblocking(False)
            task = loop.create_task(loop.connect_accepted_socket(factory, connection))
            task.add_done_callback(_reset_is_no_error)

    def _watch(
        self,
        loop: asyncio.AbstractEventLoop,
        listening: socket.socket,
        factory: functools.partial[asyncio.Protocol],
    ) -> None:
        if listening in self._listening:  # not closed meanwhile
            loop.add_reader(listening.fileno(), self._accept, loop, listening, factory)

    def close(self) -> None:
        """Stop watching and close the duplicates."""
        loop = asyncio.get_running_loop()
        for duplicate in self._listening:
            loop.remove_reader(duplicate.fileno())
            duplicate.close()
        self._listening.clear()
        self._server = None


def _reset_is_no_error(task: "asyncio.Task[object]") -> None:
    """A connection that failed while being set up (reset by its client) is no error of ours."""
    if not task.cancelled() and task.exception() is not None:
        log.debug("a connection closed while it was set up: %s", task.exception())
