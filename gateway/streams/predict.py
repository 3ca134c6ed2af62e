"""One stream message, start to end: route -> decode -> run -> encode, as an HTTP request is.

A message is what `POST /v2/models/{model}/infer` receives: its body is the same Open Inference
Protocol v2 request (JSON, or Triton's binary extension when an `inference-header-content-length`
header says where the JSON ends), its headers play the HTTP headers' part (the model's
`sticky_header` pins a user to a variant, `x-request-id` names the request). It goes through
the same InferenceService: the same routing (live, canary, shadows), metrics
(`gateway_requests_total` with the status the request would get over HTTP) and monitor. Its
request id is, in that order, the `x-request-id` header, the body's `id`, the message's own id
in its stream (each only if it is a safe id, README "Asking for predictions"), so feedback and
shadow records join with it.

The steps between decoding and encoding are HTTP's and gRPC's (gateway.exchange): the message is
counted in flight while it runs, and its answer in `gateway_requests_total` and the access log.

The answer is a Record: a prediction (body: the v2 response, as HTTP answers it; headers: `id`,
`model`, `variant`, `role`, `revision`, `message_id`), or for a message that cannot be answered
a dead letter (body: the message's own; headers: `message_id`, `model`, `status`, `error`, `id`
when known, and `headers`, the message's headers as a JSON object).
"""

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import NamedTuple

import orjson

from gateway.access_log import AccessLog
from gateway.errors import BadRequest, GatewayError, PayloadTooLarge
from gateway.exchange import infer_counted, record_answer
from gateway.protocol import v2
from gateway.request_ids import header_safe, new_request_id
from gateway.routing import Route
from gateway.service import InferenceService
from gateway.types import InferRequest, InferResult

log = logging.getLogger(__name__)

HEADER_LENGTH = b"inference-header-content-length"  # Triton's binary tensor extension
RETRIED = frozenset({429, 503})  # the queue is full, or not ready: asked again, not refused
RETRY_PAUSE_S = (0.01, 0.5)  # the first pause before asking again, and the longest
INTERNAL_ERROR = "internal error; the gateway logged the details"


class Message(NamedTuple):
    """One message read from a stream.

    `id`: its id in the stream (Redis: the entry id `1700000000000-0`; Kafka:
    `topic/partition/offset`); `body`: the v2 request (None: the message has none); `headers`:
    names in lower case, as ASGI gives HTTP headers (Redis: the entry's other fields; Kafka: the
    message headers).
    """

    id: str
    body: bytes | None
    headers: Mapping[bytes, bytes]


class Record(NamedTuple):
    """What a consumer writes for one message: a prediction, or a dead letter."""

    dead_letter: bool
    body: bytes
    headers: dict[str, bytes]
    status: int  # 200, or the error's HTTP status


async def answer(
    service: InferenceService,
    model: str,
    message: Message,
    max_body_bytes: int,
    retry_s: float,
    access_log: AccessLog | None = None,
) -> Record:
    """The prediction of `message`, or its dead letter; never raises.

    A 429 (the variant's queue is full) or 503 (not ready) is asked again after a growing pause
    for up to `retry_s` seconds, then dead-lettered. Only the last try is counted in the metrics
    (and the access log, when there is one), as an HTTP request with the same status would be.
    """
    deadline = time.monotonic() + retry_s
    pause = RETRY_PAUSE_S[0]
    while True:
        started = time.perf_counter()
        record, route = await _attempt(service, model, message, max_body_bytes, started)
        if record.status not in RETRIED or time.monotonic() + pause > deadline:
            break
        await asyncio.sleep(pause)
        pause = min(pause * 2, RETRY_PAUSE_S[1])
    if route is not None:
        request_id = record.headers.get("id", b"").decode() or message.id
        seconds = time.perf_counter() - started
        record_answer(service, access_log, model, route, record.status, request_id, seconds)
    return record


async def _attempt(
    service: InferenceService, model: str, message: Message, max_body_bytes: int, started: float
) -> tuple[Record, Route | None]:
    route: Route | None = None
    request_id = header_safe(_text(message.headers.get(b"x-request-id")))
    try:
        body = _body(message, max_body_bytes)
        route = service.route(model, message.headers)
        session = service.session(model, route.variant)
        service.admit(session, started)
        decoded = _decode(body, message.headers)
        request_id = _request_id(request_id, decoded, message)
        result = await infer_counted(service, session, route, decoded, request_id, started)
        return prediction(result, decoded, request_id, message.id), route
    except GatewayError as exc:
        return dead_letter(message, model, exc.status_code, exc.message, request_id), route
    except Exception:
        log.exception("unexpected error answering message %s of model %s", message.id, model)
        return dead_letter(message, model, 500, INTERNAL_ERROR, request_id), route


def _request_id(given: str | None, decoded: InferRequest, message: Message) -> str:
    """The x-request-id header's, else the body's `id`, else the message's own (each only if
    it is a safe id), else a new one."""
    body_id = decoded.id and header_safe(decoded.id)
    return given or body_id or header_safe(message.id) or new_request_id()


def _body(message: Message, max_body_bytes: int) -> bytes:
    if message.body is None:
        raise BadRequest("the message has no body: it needs an inference request")
    if len(message.body) > max_body_bytes:
        raise PayloadTooLarge(
            f"message body of {len(message.body)} bytes is over max_body_bytes {max_body_bytes}"
        )
    return message.body


def _decode(body: bytes, headers: Mapping[bytes, bytes]) -> InferRequest:
    length = headers.get(HEADER_LENGTH)
    return v2.decode_request(body, None if length is None else length.decode("latin-1"))


def prediction(result: InferResult, decoded: InferRequest, request_id: str, source: str) -> Record:
    """The prediction record: the v2 response and who answered (module docstring)."""
    body, header_length = v2.encode_response(result, decoded, request_id)
    headers = {
        "id": request_id.encode(),
        "model": result.model.encode(),
        "variant": result.variant.encode(),
        "role": result.role.encode(),
        "revision": str(result.revision).encode(),
        "message_id": source.encode(),
    }
    if header_length is not None:
        headers[HEADER_LENGTH.decode()] = str(header_length).encode()
    return Record(False, body, headers, 200)


def dead_letter(
    message: Message, model: str, status: int, error: str, request_id: str | None
) -> Record:
    """The dead-letter record: the message as it came, and why it was not answered."""
    headers = {
        "message_id": message.id.encode(),
        "model": model.encode(),
        "status": str(status).encode(),
        "error": error.encode(),
    }
    if request_id:
        headers["id"] = request_id.encode()
    if message.headers:
        originals = {_text(name): _text(value) for name, value in message.headers.items()}
        headers["headers"] = orjson.dumps(originals)
    return Record(True, message.body or b"", headers, status)


def _text(value: bytes | None) -> str:
    return "" if value is None else value.decode("latin-1")
