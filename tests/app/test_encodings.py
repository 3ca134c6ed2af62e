"""Content codings and request ids in the app: admin bodies, the threshold, a fuzzer."""

import gzip
import json
import zlib

import httpx
from app.conftest import AppClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import ADMIN, IRIS_ROWS, iris_body

INFER = "/v2/models/iris/infer"


async def test_admin_bodies_may_be_compressed(client: httpx.AsyncClient) -> None:
    """The admin API decodes gzip and deflate bodies too, and refuses unknown codings."""
    canary = json.dumps({"variant": "green", "weight": 0.25}).encode()
    headers = {**ADMIN, "content-encoding": "gzip"}
    put = await client.put(
        "/admin/models/iris/canary", content=gzip.compress(canary), headers=headers
    )
    assert put.status_code == 200 and put.json()["canary"]["weight"] == 0.25
    headers = {**ADMIN, "content-encoding": "deflate"}
    flip = await client.post(
        "/admin/models/iris/flip", content=zlib.compress(b'{"to": "mlp"}'), headers=headers
    )
    assert flip.status_code == 200 and flip.json()["live"] == "mlp"
    headers = {**ADMIN, "content-encoding": "zstd"}
    refused = await client.put("/admin/models/iris/canary", content=canary, headers=headers)
    assert refused.status_code == 415 and "'zstd'" in refused.json()["error"]


async def test_compress_above_bytes_sets_the_threshold(make_client: AppClient) -> None:
    """compress_above_bytes: 0 compresses every answer; the default leaves small ones alone."""
    everything = await make_client(compress_above_bytes=0)
    small = await everything.post(INFER, json=iris_body(), headers={"accept-encoding": "deflate"})
    assert small.headers["content-encoding"] == "deflate" and small.json()["outputs"]
    default = await make_client()
    plain = await default.post(INFER, json=iris_body(), headers={"accept-encoding": "deflate"})
    assert "content-encoding" not in plain.headers


CODINGS = ["gzip", "deflate", "identity", "", "x-gzip", "GZIP", "br", "compress", "gzip, deflate"]


def encode(body: bytes, coding: str) -> bytes:
    """`body` as `coding` says, for the codings the gateway knows; others unchanged."""
    for name in reversed([c.strip().lower() for c in coding.split(",")]):
        if name in ("gzip", "x-gzip"):
            body = gzip.compress(body)
        elif name == "deflate":
            body = zlib.compress(body)
    return body


async def test_fuzzed_codings_and_ids_never_fail_with_500(client: httpx.AsyncClient) -> None:
    """Random Content-Encoding, Accept-Encoding and x-request-id values, on good and garbage
    bodies: always 200 or a 4xx with an error, answers that decode, ids echoed only when safe."""
    calls: list[tuple[bytes, dict[bytes, bytes]]] = []
    header_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF), max_size=300)

    @settings(
        max_examples=300, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck)
    )
    @given(
        st.sampled_from(CODINGS) | st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E)),
        st.booleans(),
        st.binary(max_size=64),
        st.none() | st.sampled_from(["gzip", "deflate;q=0.5, gzip;q=0.4", "*;q=0"]) | header_text,
        st.none() | header_text,
        st.integers(1, 150),
    )
    def collect(
        coding: str, valid: bool, garbage: bytes, accept: str | None, rid: str | None, rows: int
    ) -> None:
        body = json.dumps(iris_body(IRIS_ROWS * rows)).encode()
        headers = {b"content-encoding": coding.encode("latin-1")}
        if accept is not None:
            headers[b"accept-encoding"] = accept.encode("latin-1")
        if rid is not None:
            headers[b"x-request-id"] = rid.encode("latin-1")
        calls.append((encode(body, coding) if valid else garbage, headers))

    collect()
    for content, headers in calls:
        response = await client.post(INFER, content=content, headers=headers)
        assert response.status_code in (200, 400, 413, 415), (content, headers, response.text)
        assert response.status_code == 200 or response.json()["error"]
        rid = headers.get(b"x-request-id", b"").decode("latin-1")
        safe = 0 < len(rid) <= 256 and all("!" <= c <= "~" for c in rid)
        assert (response.headers["x-request-id"] == rid) == safe, (rid, response.headers)
    assert (await client.post(INFER, json=iris_body())).status_code == 200
