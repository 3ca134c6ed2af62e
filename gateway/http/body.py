"""Reading request bodies within a size limit (CONTRACT §2: 413), straight from ASGI messages."""

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from gateway.errors import BadRequest, PayloadTooLarge

Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Headers = dict[bytes, bytes]  # raw ASGI header names (lower case) and values


async def read_body(receive: Receive, headers: Headers, limit: int) -> bytes:
    """The whole body, refused as soon as it is known to be over `limit` bytes."""
    declared = headers.get(b"content-length")
    if declared is not None:
        if not declared.isdigit():
            raise BadRequest(f"Content-Length {declared.decode('latin-1')!r} is not a number")
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
            return b"".join([*chunks, chunk]) if chunks else chunk
        chunks.append(chunk)


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"request body is larger than the limit of {limit} bytes")
