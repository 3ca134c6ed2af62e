"""Reading request bodies within a size limit (413, README "Routes"), straight from ASGI messages.

A body sent with `Content-Encoding: gzip` or `deflate` is decoded here, and the limit holds for
the decoded size too (gateway.http.compression).
"""

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from gateway.errors import BadRequest, PayloadTooLarge
from gateway.http.compression import decode_body, shown

Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Headers = dict[bytes, bytes]  # raw ASGI header names (lower case) and values


async def read_body(receive: Receive, headers: Headers, limit: int) -> bytes:
    """The whole body, decoded as its Content-Encoding says; refused as soon as it is known
    to be over `limit` bytes, as sent or decoded."""
    declared = headers.get(b"content-length")
    if declared is not None:
        if not declared.isdigit():
            raise BadRequest(f"Content-Length {shown(declared.decode('latin-1'))} is not a number")
        if int(declared) > limit:
            raise _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise BadRequest("the client disconnected before sending the whole body")
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        if not message.get("more_body", False):
            body = b"".join([*chunks, chunk]) if chunks else chunk
            coding = headers.get(b"content-encoding")
            return body if coding is None else decode_body(body, coding, limit)
        chunks.append(chunk)


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"request body is larger than the limit of {limit} bytes")
