"""Admission at the door: inference requests are admitted or refused as soon as their head
arrives, by the connection itself (README "Batching and admission").

A refusal (429 when its variant's queue is full, 504 when it could not be answered before its
deadline) came before the body was read, but still cost an ASGI task, the endpoint and uvicorn's
response machinery: about a quarter of a served request on the heavy model. At four times the
capacity the gateway spent its core turning requests away, fell behind in reading them, and
answered everything seconds late, health probes included (docs/benchmarks.md, overload). So
GatewayHttpProtocol asks the door at the end of each head: the door routes the request and asks
its queue, as the endpoint would. A refusal is written at once, in one write, with the
endpoint's body and headers, and counted as the endpoint counts it; the body that follows is read
and dropped. An admitted request goes on to the endpoint with its route, its session, its
arrival time and the place it holds in its queue (`Admitted`), so it is routed once. Ray Serve's
proxy refuses over `max_queued_requests` in the same way, before a replica sees the request.

The door stays out of the way of everything else: a request that is not an inference POST or is
for a model none of whose variants has had a queue yet (runs made inline, on the event loop,
cannot be refused: the endpoint admits them), a head that asks for `100-continue` or an upgrade,
a connection that closes after its answer (HTTP/1.0, `Connection: close`, a drain) or has a
request ahead of it, a gateway that traces requests, and every error but 429 and 504 go the
usual way: the endpoint routes and admits them itself, as it does in-process (tests, other ASGI
servers).
"""

import time
from typing import TYPE_CHECKING, NamedTuple

from gateway.errors import GatewayError, InferenceTimeout, QueueFull
from gateway.exchange import choose_route, record_answer
from gateway.http.inference import Admitted, error_answer
from gateway.request_ids import header_safe, new_request_id
from gateway.routing import Route

if TYPE_CHECKING:
    from gateway.http.app import GatewayApp


class Refused(NamedTuple):
    """A request the door refused: its answer's status, its request id (a header line of its
    own) and the rest of its head and body, from the other headers on."""

    status: int
    request_id: bytes
    rest: bytes


ANSWERS_KEPT = 256  # distinct refusals kept as bytes (routes x reasons x Retry-After values)


class Door:
    """Admits or refuses inference requests from their head (see the module docstring)."""

    def __init__(self, app: "GatewayApp") -> None:
        self._app = app
        self._paths: dict[bytes, tuple[str, str | None] | None] = {}
        # Each refusal's answer from its headers on, but the request id: the same bytes each
        # time for one route, reason and Retry-After.
        self._answers: dict[tuple[object, ...], tuple[int, bytes]] = {}

    def target(self, method: bytes, url: bytes) -> tuple[str, str | None] | None:
        """The model and variant (None: routed) of a request the door decides on, from its
        method and URL: an inference POST for a model with a queue, once the models are loaded
        and unless requests are traced (their spans begin in the endpoint); else None."""
        app = self._app
        service = app.service
        if method != b"POST" or service is None or app.tracing is not None:
            return None
        try:
            target = self._paths[url]
        except KeyError:
            target = self._paths[url] = self._find(url)
        if target is None or target[0] not in service.scheduler.queued_models:
            return None  # nothing a queue could refuse: the endpoint routes it, as in-process
        return target

    def _find(self, url: bytes) -> tuple[str, str | None] | None:
        if len(self._paths) >= ANSWERS_KEPT:
            self._paths.clear()  # URLs of unknown models, say: never kept unbounded
        path = url.split(b"?", 1)[0]
        found = None if b"%" in path else self._app.inference_endpoint(path.decode("latin-1"))
        return None if found is None else (found[1]["model"], found[1].get("variant"))

    def admit(
        self, target: tuple[str, str | None], headers: list[tuple[bytes, bytes]]
    ) -> Admitted | Refused | None:
        """The door's answer to a request for `target` (`Door.target`) with `headers` (names
        in lower case); None when it goes the usual way, undecided."""
        service = self._app.service
        assert service is not None  # `target` says so
        started = time.perf_counter()
        model, variant = target
        named = dict(headers)
        try:
            route = choose_route(service, model, variant, named)
            session = service.session(model, route.variant)
        except GatewayError:
            return None  # 404, 503: the endpoint answers them
        try:
            held = service.admit(session, started, hold=True)
        except (QueueFull, InferenceTimeout) as refusal:
            header_id = named.get(b"x-request-id")
            request_id = header_safe(header_id.decode("latin-1")) if header_id else None
            request_id = request_id or new_request_id()
            status, rest = self._answer(refusal, route)
            gateway = self._app.gateway
            access_log = None if gateway is None else gateway.access_log
            seconds = time.perf_counter() - started
            record_answer(service, access_log, model, route, status, request_id, seconds)
            return Refused(status, request_id.encode("latin-1"), rest)
        return Admitted(route, session, started, held)

    def _answer(self, refusal: GatewayError, route: Route) -> tuple[int, bytes]:
        key = (refusal.message, refusal.headers, route.variant, route.role, route.revision)
        answer = self._answers.get(key)
        if answer is None:
            status, body, headers = error_answer(refusal, route, "")
            lines = [
                b"%s: %s\r\n" % (name, value) for name, value in headers if name != b"x-request-id"
            ]
            answer = (status, b"".join([*lines, b"\r\n", body]))
            if len(self._answers) >= ANSWERS_KEPT:
                self._answers.clear()
            self._answers[key] = answer
        return answer
