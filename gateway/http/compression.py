"""HTTP content codings: gzip and deflate request bodies in, compressed answers out.

This is Triton's HTTP compression, what tritonclient's `request_compression_algorithm` and
`response_compression_algorithm` send and expect: the whole body is compressed, binary tensors
included, and `Inference-Header-Content-Length` keeps the length of the uncompressed JSON part.
"deflate" is the zlib format (RFC 9110 §8.4.1.2), as tritonclient writes and reads it.
"""

import functools
import zlib

from gateway.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType

# zlib's wbits for each coding: 31 is the gzip format, 15 the zlib format.
_WBITS = {"gzip": 31, "x-gzip": 31, "deflate": 15}
# Answers are compressed on the event loop: level 1 is several times faster than zlib's default
# and gives up little on JSON and tensor bytes.
LEVEL = 1


def decode_body(body: bytes, content_encoding: bytes, limit: int) -> bytes:
    """`body` with the codings of its Content-Encoding header undone, at most `limit` bytes."""
    codings = content_encoding.decode("latin-1").lower().split(",")
    for coding in reversed(codings):  # listed in the order they were applied
        coding = coding.strip()
        if coding in ("", "identity"):
            continue
        wbits = _WBITS.get(coding)
        if wbits is None:
            raise UnsupportedMediaType(
                f"Content-Encoding {shown(coding)} is not supported: use gzip, deflate or identity"
            )
        body = _inflate(body, coding, wbits, limit)
    return body


def _inflate(data: bytes, coding: str, wbits: int, limit: int) -> bytes:
    # max_length stops inflating one byte past the limit: a small bomb is refused before the
    # memory it asks for is taken.
    inflater = zlib.decompressobj(wbits)
    try:
        body = inflater.decompress(data, limit + 1)
    except zlib.error:
        raise BadRequest(f"request body is not valid {coding} data") from None
    if len(body) > limit:
        raise PayloadTooLarge(
            f"request body is larger than the limit of {limit} bytes once decompressed"
        )
    if not inflater.eof or inflater.unused_data:
        raise BadRequest(f"request body is not valid {coding} data (cut short or followed by more)")
    return body


@functools.lru_cache(maxsize=64)  # clients send the same few values on every request
def response_coding(accept_encoding: bytes) -> bytes | None:
    """The coding for an answer to this Accept-Encoding: b"gzip", b"deflate" or None.

    The one with the highest q-value wins, gzip on a tie; `*` stands for codings not listed;
    q=0 refuses a coding.
    """
    weights: dict[str, float] = {}
    for item in accept_encoding.decode("latin-1").lower().split(","):
        coding, _, params = item.partition(";")
        weights[coding.strip()] = _quality(params)
    star = weights.get("*", 0.0)
    gzip = max(weights.get("gzip", star), weights.get("x-gzip", 0.0))
    deflate = weights.get("deflate", star)
    if max(gzip, deflate) <= 0:
        return None
    return b"gzip" if gzip >= deflate else b"deflate"


def _quality(params: str) -> float:
    """The q-value among `;`-separated parameters: 1 when absent, 0 when not in [0, 1]."""
    for param in params.split(";"):
        name, _, value = param.partition("=")
        if name.strip() == "q":
            try:
                quality = float(value)
            except ValueError:
                return 0.0
            return quality if 0.0 <= quality <= 1.0 else 0.0  # NaN too
    return 1.0


def encode_body(payload: bytes, coding: bytes) -> bytes:
    """`payload` compressed in `coding` (b"gzip" or b"deflate")."""
    return zlib.compress(payload, LEVEL, _WBITS[coding.decode()])


def shown(value: str, limit: int = 64) -> str:
    """A header value quoted for an error message, cut to `limit` characters."""
    return repr(value if len(value) <= limit else value[:limit] + "...")
