"""Bounded request heads in the gateway's protocol (gateway/http/protocol.py), fed by hand."""

import asyncio
import json
from typing import Any

import httptools
from uvicorn.config import Config
from uvicorn.server import ServerState

from gateway.http.protocol import GatewayHttpProtocol

LINE, HEAD = 1024, 4096  # small limits, to keep the requests short


class FakeTransport:
    """What the protocol writes, and whether it closed."""

    def __init__(self) -> None:
        self.written = bytearray()
        self.closed = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 40000)}.get(name)

    def write(self, data: bytes) -> None:
        self.written += data

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0


class CountingParser:
    """httptools' parser, counting the bytes it is fed."""

    def __init__(self, parser: httptools.HttpRequestParser) -> None:
        self.parser = parser
        self.fed = 0

    def feed_data(self, data: bytes) -> None:
        self.fed += len(data)
        self.parser.feed_data(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.parser, name)


async def echo_length(scope: Any, receive: Any, send: Any) -> None:
    """Answers 200 with the length of the body it read."""
    size, more = 0, True
    while more:
        message = await receive()
        size += len(message.get("body", b""))
        more = message.get("more_body", False)
    body = str(size).encode()
    headers = [(b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def connect() -> tuple[GatewayHttpProtocol, FakeTransport, CountingParser]:
    config = Config(app=echo_length, lifespan="off", proxy_headers=False)
    protocol = GatewayHttpProtocol(
        config=config,
        server_state=ServerState(),
        app_state={},
        max_header_line_bytes=LINE,
        max_request_head_bytes=HEAD,
    )
    transport = FakeTransport()
    protocol.connection_made(transport)  # type: ignore[arg-type]
    parser = CountingParser(protocol.parser)
    protocol.parser = parser  # type: ignore[assignment]
    return protocol, transport, parser


def request(*headers: bytes, body: bytes = b"") -> bytes:
    head = b"POST /echo HTTP/1.1\r\nhost: gw\r\n" + b"".join(h + b"\r\n" for h in headers)
    return head + b"content-length: %d\r\n\r\n" % len(body) + body


def header_of_size(size: int, name: bytes = b"x-pad") -> bytes:
    """A header line whose name and value together are `size` bytes."""
    return name + b": " + b"v" * (size - len(name))


def head_of_size(total: int, *headers: bytes) -> list[bytes]:
    """`headers` and more, no line over the limit, making a head of exactly `total` bytes."""
    headers_list = list(headers)
    while (missing := total - len(request(*headers_list))) > 0:
        size = min(LINE, missing - 4)  # a line takes 4 bytes more: ": " and CRLF
        headers_list.append(header_of_size(size, b"x-%d" % len(headers_list)))
    assert len(request(*headers_list)) == total
    return headers_list


async def answers(transport: FakeTransport) -> list[tuple[int, bytes]]:
    """The statuses and bodies written so far, once the app tasks have run."""
    for _ in range(10):
        await asyncio.sleep(0)
    found = []
    rest = bytes(transport.written)
    while rest:
        head, _, rest = rest.partition(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        found.append((int(head.split()[1]), rest[:length]))
        rest = rest[length:]
    return found


async def test_a_head_at_the_limits_is_served() -> None:
    """A header line of exactly the line limit, in a head of exactly the head limit, passes."""
    protocol, transport, _ = connect()
    protocol.data_received(request(*head_of_size(HEAD, header_of_size(LINE)), body=b"abc"))
    assert await answers(transport) == [(200, b"3")] and not transport.closed


async def test_a_head_over_the_limit_in_one_read_is_431() -> None:
    """A head one byte over the limit is refused; the parser never gets more than the limit."""
    protocol, transport, parser = connect()
    data = request(*head_of_size(HEAD + 1))
    protocol.data_received(data)
    [(status, body)] = await answers(transport)
    assert status == 431 and transport.closed and parser.fed == HEAD
    assert json.loads(body) == {
        "error": f"request head is larger than max_request_head_bytes ({HEAD} bytes)"
    }
    assert b"content-type: application/json" in transport.written


async def test_a_head_trickling_in_is_cut_at_the_limit() -> None:
    """A never-ending header sent 100 bytes at a time is refused at the head limit."""
    protocol, transport, parser = connect()
    protocol.data_received(b"POST /echo HTTP/1.1\r\nx-long: ")
    for _ in range(HEAD // 100 + 1):
        protocol.data_received(b"v" * 100)
    [(status, _)] = await answers(transport)
    assert status == 431 and parser.fed == HEAD


async def test_a_long_header_line_is_431() -> None:
    """A header line one byte over the line limit, in a small head, is refused."""
    protocol, transport, _ = connect()
    protocol.data_received(request(header_of_size(LINE + 1), body=b"abc"))
    [(status, body)] = await answers(transport)
    assert status == 431 and transport.closed
    assert json.loads(body) == {
        "error": f"request header line is longer than max_header_line_bytes ({LINE} bytes)"
    }


async def test_a_long_line_split_across_reads_is_431() -> None:
    """A long header line sent in small pieces is refused as well."""
    protocol, transport, _ = connect()
    data = request(header_of_size(LINE + 1))
    for start in range(0, len(data), 100):
        protocol.data_received(data[start : start + 100])
    assert [status for status, _ in await answers(transport)] == [431]


async def test_a_large_body_in_the_head_read_is_not_counted() -> None:
    """A body read along with its head does not count towards the head (only the head does)."""
    protocol, transport, _ = connect()
    protocol.data_received(request(body=b"x" * (3 * HEAD)) + request(body=b"yz"))
    assert await answers(transport) == [(200, b"%d" % (3 * HEAD)), (200, b"2")]
    assert not transport.closed


async def test_the_limit_holds_for_each_request_of_a_connection() -> None:
    """Heads near the limit, one after the other on a kept-alive connection, are all served."""
    protocol, transport, _ = connect()
    near = request(*[header_of_size(LINE, b"x-%d" % i) for i in range(3)])
    assert HEAD - LINE < len(near) < HEAD
    for _ in range(3):
        protocol.data_received(near)
        await answers(transport)
    assert [status for status, _ in await answers(transport)] == [200, 200, 200]


async def test_a_pipelined_request_with_a_long_line_is_431() -> None:
    """A long line in a request that arrived in the same read as the one before is refused:
    the first request is answered, the second gets the 431."""
    protocol, transport, _ = connect()
    second = request(header_of_size(LINE + 1))
    protocol.data_received(request(body=b"a") + second[:300])
    protocol.data_received(second[300:])
    assert [status for status, _ in await answers(transport)] == [200, 431]
