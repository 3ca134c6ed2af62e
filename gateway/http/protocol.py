"""uvicorn's httptools protocol, with each response leaving in one socket write.

uvicorn writes a response's status line and headers when the app sends `http.response.start`, and
the body when it sends `http.response.body`: two writes, two TCP segments and two wake-ups of the
client for every small answer. The benchmark counted two write(2) calls per request with strace;
on a saturated core the second one is several percent of a small model's request.

Here the connection's transport is corked: what is written during one step of the event loop is
joined and written once, right after the step (the inference endpoint sends the start and the
body in the same step). Everything else is uvicorn's own protocol, unchanged.
"""

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

# Bigger writes go out at once (after what is pending): joining would copy them for nothing.
JOIN_BELOW_BYTES = 64 * 1024


class CorkedTransport:
    """A transport whose writes made in one event-loop step are sent together after it."""

    __slots__ = ("_loop", "_pending", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []

    def write(self, data: bytes) -> None:
        if len(data) >= JOIN_BELOW_BYTES:
            self.flush()
            self._transport.write(data)
            return
        if not self._pending:
            self._loop.call_soon(self.flush)
        self._pending.append(data)

    def flush(self) -> None:
        """Write what is pending now, as one write."""
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
    """uvicorn's httptools protocol on a corked transport (see the module docstring)."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        corked = CorkedTransport(transport, self.loop)
        super().connection_made(corked)  # type: ignore[arg-type]
