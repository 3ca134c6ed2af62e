"""The gateway's response transport on real loopback TCP connections (gateway/http/protocol.py)."""

import asyncio
import socket
import struct
import sys

import pytest

from gateway.http.protocol import JOIN_BELOW_BYTES, BatchingTransport

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="counts segments with Linux's TCP_INFO"
)


def data_segments(sock: socket.socket) -> int:
    """tcpi_data_segs_in of Linux's struct tcp_info: TCP segments with data this socket got."""
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    return int(struct.unpack_from("I", info, 152)[0])


def receive(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        assert chunk, f"connection closed after {len(data)} of {size} bytes"
        data += chunk
    return data


class Connection:
    """A loopback TCP connection: the server side's asyncio transport and the client socket."""

    async def __aenter__(self) -> "Connection":
        loop = asyncio.get_running_loop()
        accepted: asyncio.Future[asyncio.Transport] = loop.create_future()

        class Server(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                accepted.set_result(transport)  # type: ignore[arg-type]

        self.server = await loop.create_server(Server, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        self.client = await asyncio.to_thread(socket.create_connection, ("127.0.0.1", port), 5)
        self.client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.transport = await accepted
        self.busy = True
        self.batching = BatchingTransport(self.transport, loop, lambda: self.busy)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.client.close()
        self.transport.close()
        self.server.close()
        await self.server.wait_closed()


async def test_writes_while_busy_leave_together_after_the_step() -> None:
    async with Connection() as c:
        before = data_segments(c.client)
        c.batching.write(b"HTTP/1.1 200 OK\r\n\r\n")
        c.batching.write(b"body")
        assert c.batching.get_write_buffer_size() == 23  # held until the step ends
        await asyncio.sleep(0)  # the step ends
        assert receive(c.client, 23) == b"HTTP/1.1 200 OK\r\n\r\nbody"
        assert data_segments(c.client) - before == 1


async def test_writes_of_a_request_served_alone_go_out_at_once() -> None:
    async with Connection() as c:
        c.busy = False
        before = data_segments(c.client)
        c.batching.write(b"head")
        c.batching.write(b"body")
        assert c.batching.get_write_buffer_size() == 0
        assert receive(c.client, 8) == b"headbody"
        assert data_segments(c.client) - before == 2


async def test_order_is_kept_around_a_large_write_and_a_close() -> None:
    """A large write is never held, but goes after what is; a close sends what is held first."""
    async with Connection() as c:
        large = b"x" * JOIN_BELOW_BYTES
        c.batching.write(b"head")
        c.batching.write(large)
        c.batching.write(b"tail")
        c.batching.close()
        data = await asyncio.to_thread(receive, c.client, 8 + len(large))
        assert data == b"head" + large + b"tail"
        assert c.client.recv(1) == b""  # closed after everything was sent
