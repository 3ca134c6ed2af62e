"""Content codings (gateway/http/compression.py): request bodies in, answers out."""

import gzip
import zlib

import pytest

from gateway.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType
from gateway.http.compression import decode_body, encode_body, response_coding, shown

BODY = b'{"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}'


@pytest.mark.parametrize(
    ("coding", "sent"),
    [
        (b"gzip", gzip.compress(BODY)),  # what tritonclient sends for "gzip"
        (b"deflate", zlib.compress(BODY)),  # and for "deflate": the zlib format
        (b"GZip", gzip.compress(BODY)),
        (b"x-gzip", gzip.compress(BODY)),
        (b"identity", BODY),
        (b"", BODY),
        (b"deflate, gzip", gzip.compress(zlib.compress(BODY))),  # applied in the listed order
    ],
)
def test_known_codings_are_decoded(coding: bytes, sent: bytes) -> None:
    """gzip, deflate (zlib), identity and a list of them give back the body as it was."""
    assert decode_body(sent, coding, limit=len(BODY)) == BODY


def test_an_unknown_coding_is_415_naming_it() -> None:
    """br, compress or anything else is refused with a message naming it, cut when long."""
    with pytest.raises(UnsupportedMediaType, match="'br'"):
        decode_body(BODY, b"br", 1000)
    with pytest.raises(UnsupportedMediaType) as info:
        decode_body(BODY, b"x" * 5000, 1000)
    assert len(info.value.message) < 200


@pytest.mark.parametrize(
    "sent",
    [
        BODY,  # not compressed at all
        gzip.compress(BODY)[:-5],  # cut short
        gzip.compress(BODY) + b"junk",  # followed by more
        zlib.compress(BODY),  # deflate sent as gzip
    ],
    ids=["plain", "truncated", "trailing", "zlib"],
)
def test_a_false_gzip_is_400_naming_the_coding(sent: bytes) -> None:
    """A body that claims gzip and is not whole, valid gzip is a 400 that says gzip."""
    with pytest.raises(BadRequest, match="not valid gzip data"):
        decode_body(sent, b"gzip", 1000)


@pytest.mark.parametrize("coding", [b"gzip", b"deflate"])
def test_a_bomb_is_413_without_inflating_it(coding: bytes) -> None:
    """64 KiB of gzip that would inflate to 64 MiB is refused once past the limit."""
    bomb = zlib.compress(bytes(64 * 1024 * 1024), 9, 31 if coding == b"gzip" else 15)
    assert len(bomb) < 128 * 1024
    with pytest.raises(PayloadTooLarge, match="once decompressed"):
        decode_body(bomb, coding, limit=1024 * 1024)
    assert len(decode_body(bomb, coding, limit=64 * 1024 * 1024)) == 64 * 1024 * 1024


@pytest.mark.parametrize(
    ("accept", "coding"),
    [
        (b"gzip", b"gzip"),  # tritonclient's response_compression_algorithm="gzip"
        (b"deflate", b"deflate"),
        (b"gzip, deflate", b"gzip"),  # httpx, curl --compressed: a tie goes to gzip
        (b"deflate, gzip;q=0.5", b"deflate"),
        (b"gzip;q=0, deflate", b"deflate"),
        (b"gzip;q=0", None),  # refused
        (b"br", None),
        (b"identity", None),
        (b"*", b"gzip"),
        (b"*;q=0.1, deflate;q=0.5", b"deflate"),
        (b"gzip;q=0, *", b"deflate"),
        (b"*;q=0", None),
        (b"GZIP ; Q=0.8", b"gzip"),
        (b"x-gzip", b"gzip"),
        (b"gzip;q=abc, deflate;q=nan", None),  # unreadable q-values count as refusals
        (b"gzip;q=2", None),
        (b"", None),
    ],
)
def test_accept_encoding_chooses_the_preferred_coding(accept: bytes, coding: bytes | None) -> None:
    """q-values decide between gzip and deflate; q=0 refuses; `*` covers what is not listed."""
    assert response_coding(accept) == coding


@pytest.mark.parametrize(
    ("coding", "decompress"), [(b"gzip", gzip.decompress), (b"deflate", zlib.decompress)]
)
def test_answers_decode_as_tritonclient_decodes_them(coding: bytes, decompress: object) -> None:
    """gzip answers open with gzip.decompress and deflate ones with zlib.decompress, as in
    tritonclient's InferResult."""
    payload = BODY * 50
    compressed = encode_body(payload, coding)
    assert len(compressed) < len(payload) / 5
    assert decompress(compressed) == payload  # type: ignore[operator]


def test_shown_cuts_long_values() -> None:
    """Header values quoted in messages keep at most 64 characters."""
    assert shown("br") == "'br'"
    assert shown("x" * 100) == repr("x" * 64 + "...")
