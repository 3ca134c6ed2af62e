"""uvicorn's httptools protocol, with each response leaving in one socket write, batched under load.

uvicorn writes a response's status line and headers when the app sends `http.response.start`, and
the body when it sends `http.response.body`: two writes and two TCP segments for every small
answer. Here a response's head is held back and sent with the body's first write. And while other
requests are being served, writes wait for the end of the current event-loop step and leave with
theirs: at 32 connections that cut the server's system time per request threefold and raised
throughput by half (docs/benchmarks.md). A request served alone is written at once, as that
wait would only add a loop iteration to its latency. The rest is uvicorn's own protocol.
"""

import asyncio
from collections.abc import Callable
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

# Bigger writes are not joined with what is pending (that would copy them): they follow it.
JOIN_BELOW_BYTES = 64 * 1024


def _is_head(data: bytes) -> bool:
    """A status line and headers, except 1xx (100 Continue must reach the client at once)."""
    return data.startswith(b"HTTP/") and data.endswith(b"\r\n\r\n") and data[9:10] != b"1"


class ResponseTransport:
    """The connection's transport, holding writes back as the module docstring says."""

    __slots__ = ("_busy", "_flush_soon", "_loop", "_pending", "_transport")

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
        self._flush_soon = False

    def write(self, data: bytes) -> None:
        if len(data) >= JOIN_BELOW_BYTES:
            self.flush()
            self._transport.write(data)
            return
        self._pending.append(data)
        if self._flush_soon or (len(self._pending) == 1 and _is_head(data)):
            return  # leaves at the end of the step, or with the body
        if self._busy():
            self._flush_soon = True
            self._loop.call_soon(self.flush)
        else:
            self.flush()

    def flush(self) -> None:
        """Write what is held, as one write."""
        self._flush_soon = False
        if not self._pending:
            return
        data = self._pending[0] if len(self._pending) == 1 else b"".join(self._pending)
        self._pending.clear()
        if not self._transport.is_closing():
            self._transport.write(data)

    def response_done(self) -> None:
        """A response ended: send a head still held (HEAD, 204, 304 have no body to join)."""
        if not self._flush_soon:
            self.flush()

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
    """uvicorn's httptools protocol on a ResponseTransport (see the module docstring)."""

    transport: ResponseTransport  # type: ignore[assignment]

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        wrapped = ResponseTransport(transport, self.loop, self._others_in_flight)
        super().connection_made(wrapped)  # type: ignore[arg-type]

    def _others_in_flight(self) -> bool:
        return len(self.tasks) > 1  # the server's requests in progress, this one included

    def on_response_complete(self) -> None:
        self.transport.response_done()
        super().on_response_complete()
