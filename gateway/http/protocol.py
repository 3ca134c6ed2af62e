"""uvicorn's httptools protocol, with responses written in batches while the server is busy.

uvicorn writes each piece of a response as the app sends it: the status line and headers, then
the body, two write(2) calls and two TCP segments for a small answer. While other requests are
in flight, writes here wait for the end of the current event-loop step and leave together, one
write per connection: at 32 connections that cut the server's system time per request about
threefold and raised throughput by about 40% (docs/benchmarks.md). A request served alone is
written as uvicorn writes it: waiting for the end of the step added a loop iteration to its
latency, and even holding its head back for the body made it slower (p50 +12% at one
connection).

Request heads are bounded here too (README "Configuration"): httptools keeps a header's name and
value until the whole line has arrived, so a client could make it hold any amount. A head (request
line and headers) is counted as it arrives and fed to the parser only up to
`max_request_head_bytes`; one that goes on past it answers 431 and the connection closes. A
complete head with a header line (name and value) over `max_header_line_bytes` answers 431 too.
While the gateway drains before a shutdown (gateway.http.drain), every answer carries
`Connection: close` and its connection closes after it, so kept-alive clients reconnect through
their load balancer to another replica. Its first connection installs the gateway's own
accepting (gateway.http.accept), which keeps up with new connections however busy the server
is. Inference requests are admitted or refused when their head arrives (gateway.http.door), a
refusal written at once without an ASGI task. Everything else is uvicorn's own protocol.
"""

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any

import orjson
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from gateway.http.inference import ADMITTED, Admitted

# Bigger writes are never held (joining would copy them): they go out at once, after what waits.
JOIN_BELOW_BYTES = 64 * 1024

if TYPE_CHECKING:
    from gateway.http.accept import Acceptor
    from gateway.http.door import Door
    from gateway.http.drain import Drain


class BatchingTransport:
    """The connection's transport, holding small writes to the end of the step when busy."""

    __slots__ = ("_busy", "_loop", "_pending", "_transport")

    def __init__(
        self,
        transport: asyncio.Transport,
        loop: asyncio.AbstractEventLoop,
        busy: Callable[[], bool],
    ) -> None:
        self._transport = transport
        self._loop = loop
        self._busy = busy  # are other requests being served?
        self._pending: list[bytes] = []

    def write(self, data: bytes) -> None:
        small = len(data) < JOIN_BELOW_BYTES
        if self._pending:
            if small:
                self._pending.append(data)
                return
            self.flush()
        elif small and self._busy():
            self._pending.append(data)
            self._loop.call_soon(self.flush)
            return
        self._transport.write(data)

    def flush(self) -> None:
        """Write what is held, as one write."""
        if not self._pending:
            return
        data = self._pending[0] if len(self._pending) == 1 else b"".join(self._pending)
        self._pending.clear()
        if not self._transport.is_closing():
            self._transport.write(data)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def abort(self) -> None:
        self._pending.clear()
        self._transport.abort()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(map(len, self._pending))

    def __getattr__(self, name: str) -> Any:  # reading, buffer limits, extra info: as they are
        return getattr(self._transport, name)


class GatewayHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol on a BatchingTransport, with bounded request heads and
    connections closed while draining (see the module docstring). uvicorn makes one per
    connection: pass the limits with functools.partial.
    """

    def __init__(
        self,
        *args: Any,
        max_header_line_bytes: int = 8 * 1024,
        max_request_head_bytes: int = 64 * 1024,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.max_header_line_bytes = max_header_line_bytes
        self.max_request_head_bytes = max_request_head_bytes
        # What the unfinished request head may still take; None while a body is read.
        self._head_room: int | None = max_request_head_bytes
        self._head_counted = True  # was the head counted from its first byte on?
        self._idle_after_door = False  # has the door answered a request now wholly read?
        # The app's lifespan state holds the drain and the door (ASGI lifespan "state"; uvicorn
        # passes it).
        self._drain: Drain | None = self.app_state.get("drain")
        self._door: Door | None = self.app_state.get("door")
        self._acceptor: Acceptor | None = self.app_state.get("acceptor")

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        wrapped = BatchingTransport(transport, self.loop, self._others_in_flight)
        super().connection_made(wrapped)  # type: ignore[arg-type]
        acceptor = self._acceptor
        if acceptor is not None and not acceptor.installed:  # the server listens: take over
            acceptor.install(None if self._drain is None else self._drain.server)

    def _others_in_flight(self) -> bool:
        return len(self.tasks) > 1  # the server's requests in progress, this one included

    def data_received(self, data: bytes | memoryview) -> None:
        room = self._head_room
        if room is None or len(data) <= room:
            if room is not None:
                self._head_room = room - len(data)  # a body read with it is counted too: harmless
            super().data_received(data)  # type: ignore[arg-type]  # httptools takes memoryviews
        else:
            self._receive_past(data, room)
        if self._idle_after_door and self.timeout_keep_alive_task is None:
            # The door answered the last request, whose body is read: the connection idles
            # from here (uvicorn arms this when a response completes after its request).
            self.timeout_keep_alive_task = self.loop.call_later(
                self.timeout_keep_alive, self.timeout_keep_alive_handler
            )

    def _receive_past(self, data: bytes | memoryview, room: int) -> None:
        """Receive `data`, longer than the `room` the head in progress may still take."""
        # The parser gets what the head may still take; the rest only if the head ended in it.
        # (memoryview: slices without copies, as large bodies often come in the same read.)
        view = memoryview(data)
        self._head_room = 0
        super().data_received(view[:room])  # type: ignore[arg-type]
        if self.transport.is_closing():  # uvicorn refused it (400)
            return
        if self._head_room == 0:  # still the same head, and it goes on
            limit = self.max_request_head_bytes
            self._refuse(f"request head is larger than max_request_head_bytes ({limit} bytes)")
            return
        rest, room_left = view[room:], self._head_room  # None: the head ended, a body follows
        if room_left is None or len(rest) <= room_left:
            if room_left is not None:
                self._head_room = room_left - len(rest)
            super().data_received(rest)  # type: ignore[arg-type]
        else:
            self._receive_past(rest, room_left)

    def on_message_begin(self) -> None:
        # A request that began in the read that ended the one before (pipelining) was not
        # counted from its first byte: its room is still whole.
        self._head_counted = self._head_room != self.max_request_head_bytes
        self._idle_after_door = False
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        counted = self.max_request_head_bytes - (self._head_room or 0)
        self._head_room = None
        limit = self.max_header_line_bytes
        # No line can be over the limit when all that was read is not: skip looking.
        if (counted > limit or not self._head_counted) and self._long_header_line():
            # Answered through uvicorn's cycle, as it answers over `limit_concurrency`.
            message = f"request header line is longer than max_header_line_bytes ({limit} bytes)"
            self.app = _refusal(message)
        elif self._door is not None and self._refused_at_door(self._door):
            return
        super().on_headers_complete()
        if self._drain is not None and self._drain.draining:
            self.close_after_response()

    def close_after_response(self) -> None:
        """Answer the request in progress with `Connection: close`, then close (a drain)."""
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            cycle.keep_alive = False  # uvicorn adds the header and closes after the answer

    def on_message_complete(self) -> None:
        self._head_room = self.max_request_head_bytes  # the next request's head
        self._idle_after_door = self.cycle is _ANSWERED_AT_DOOR
        super().on_message_complete()

    def _refused_at_door(self, door: "Door") -> bool:
        """Ask the door about the request whose head just ended; write its refusal, if it is
        refused, and say so. An admitted request carries its admission to the endpoint."""
        target = door.target(self.parser.get_method(), self.url)
        if target is None:
            return False
        cycle = self.cycle
        if (
            (cycle is not None and not cycle.response_complete)  # pipelined: answers keep order
            or self.expect_100_continue  # its client may never send the body we would skip
            or not self.parser.should_keep_alive()
            or self.parser.should_upgrade()
            or (self._drain is not None and self._drain.draining)
        ):
            return False
        verdict = door.admit(target, self.headers)
        if verdict is None:
            return False
        if isinstance(verdict, Admitted):
            self.scope[ADMITTED] = verdict  # type: ignore[literal-required]
            return False
        content = [STATUS_LINE[verdict.status]]
        for name, value in self.server_state.default_headers:
            content += [name, b": ", value, b"\r\n"]
        content += [b"x-request-id: ", verdict.request_id, b"\r\n", verdict.rest]
        self.transport.write(b"".join(content))
        # The body still to come is dropped (uvicorn skips it once a response is complete);
        # once it is read, the connection idles (data_received).
        self.cycle = _ANSWERED_AT_DOOR
        self.server_state.total_requests += 1  # as uvicorn counts a response complete
        return True

    def _long_header_line(self) -> bool:
        limit = self.max_header_line_bytes
        return any(len(name) + len(value) > limit for name, value in self.headers)

    def _refuse(self, message: str) -> None:
        """Answer 431 and close, like uvicorn's answer to a request it cannot parse."""
        headers, body = _answer_431(message)
        content = [STATUS_LINE[431]]
        for name, value in [*self.server_state.default_headers, *headers]:
            content += [name, b": ", value, b"\r\n"]
        content += [b"\r\n", body]
        self.transport.write(b"".join(content))
        self.transport.close()


class _AnsweredAtDoor:
    """In place of uvicorn's request cycle, for a request the door answered: its response is
    complete, so uvicorn drops its body and starts the next request as usual."""

    response_complete = True
    keep_alive = True
    message_event = asyncio.Event()  # connection_lost sets it: nobody waits on it


_ANSWERED_AT_DOOR: Any = _AnsweredAtDoor()  # stands for a RequestResponseCycle

Message = MutableMapping[str, Any]
ASGIApp = Callable[
    [Message, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]],
    Awaitable[None],
]


def _answer_431(message: str) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """Headers and body of a 431 Request Header Fields Too Large; the connection closes."""
    body = orjson.dumps({"error": message})
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]
    return headers, body


def _refusal(message: str) -> ASGIApp:
    """An ASGI app that answers every request with a 431 carrying `message`."""
    headers, body = _answer_431(message)

    async def refuse(
        scope: Message, receive: Any, send: Callable[[Message], Awaitable[None]]
    ) -> None:
        await send({"type": "http.response.start", "status": 431, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return refuse
