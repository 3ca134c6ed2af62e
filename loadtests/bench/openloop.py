"""An open-loop load generator, and a prober of the routes that must stay fast under load.

    python loadtests/bench/openloop.py offer URL --rate 2000 --seconds 5 [--features 512]
    python loadtests/bench/openloop.py probe URL --seconds 5 [--interval 0.1]

`offer` sends POST URL (an OIP v2 body of one row) at a fixed rate, each request when it is
due, whatever is still outstanding: an overloaded server is offered the same load as an idle
one. A closed-loop client such as wrk waits for an answer before it sends again, so it slows
down with the server and never sees the queue it would have built ("coordinated omission").
Each request is sent on an idle keep-alive connection of a pool (a new one when none is idle).
It prints one JSON object: for every request the time it was due, sent and answered (seconds
from the start) and its status (0: no answer, -1: the connection failed, -2: not sent, every
connection of the limit being busy).

`probe` GETs /v2/health/ready and /metrics in turn on a new connection each, as a kubelet and
a Prometheus server do, and prints their latencies and statuses.

Both take their timestamps from `time.perf_counter` (the event loop's clock may count whole
milliseconds), and run on uvloop when it is installed, as the gateway does.
"""

import argparse
import asyncio
import http.client
import json
import sys
import time
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, cast
from urllib.parse import urlsplit

GRACE_S = 2.0  # how long answers are awaited after the last request was sent
UNANSWERED, FAILED, NO_CONNECTION = 0, -1, -2  # statuses that are not HTTP's


def request_body(features: int) -> bytes:
    """An OIP v2 body of one row of `features` FP32 values (infer.lua sends the same)."""
    values = [round((i % 7) / 7, 3) for i in range(1, features + 1)]
    tensor = {"name": "input", "datatype": "FP32", "shape": [1, features], "data": values}
    return json.dumps({"inputs": [tensor]}, separators=(",", ":")).encode()


def request_bytes(url: str, features: int) -> bytes:
    """A keep-alive HTTP/1.1 POST of `request_body(features)` to `url`."""
    parts = urlsplit(url)
    body = request_body(features)
    head = (
        f"POST {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


@dataclass
class Answers:
    """Per request, by index: when it was due, sent and answered, and its status."""

    due: list[float] = field(default_factory=list)
    sent: list[float] = field(default_factory=list)
    done: list[float] = field(default_factory=list)
    status: list[int] = field(default_factory=list)

    def add(self, due: float) -> int:
        self.due.append(due)
        self.sent.append(0.0)
        self.done.append(0.0)
        self.status.append(0)
        return len(self.due) - 1


class Connection(asyncio.Protocol):
    """One keep-alive connection carrying one request at a time; reads answers with a
    Content-Length (the gateway's and uvicorn's)."""

    def __init__(self, answers: Answers, on_idle: Callable[["Connection"], None]) -> None:
        self.answers = answers
        self.on_idle = on_idle
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.index = -1
        self.expected = -1  # bytes of the whole answer, once its head is in
        self.closed = False  # set at the end of the run: nothing is recorded after it

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def send(self, index: int, payload: bytes) -> None:
        assert self.transport is not None
        self.index, self.expected = index, -1
        self.answers.sent[index] = time.perf_counter()
        self.transport.write(payload)

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        self.buffer += data
        if self.expected < 0:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            self.expected = end + 4 + _content_length(bytes(self.buffer[:end]))
        if len(self.buffer) >= self.expected:
            self.answers.done[self.index] = time.perf_counter()
            self.answers.status[self.index] = int(self.buffer[9:12])
            del self.buffer[: self.expected]
            self.index = -1
            self.on_idle(self)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.index >= 0 and not self.closed:  # closed with an answer outstanding
            self.answers.done[self.index] = time.perf_counter()
            self.answers.status[self.index] = FAILED
        self.transport = None


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


class Pool:
    """Keep-alive connections to one server: an idle one carries the next request, else a new
    one is opened for it (in the background: the schedule never waits for a connect), up to
    `limit` connections; past that a request is not sent and counts as NO_CONNECTION."""

    def __init__(self, url: str, answers: Answers, limit: int) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.answers = answers
        self.limit = limit
        self.idle: deque[Connection] = deque()
        self.every: list[Connection] = []
        self.opened = 0
        self.opening: set[asyncio.Task[None]] = set()

    async def _open(self) -> Connection:
        self.opened += 1
        _, connection = await asyncio.get_running_loop().create_connection(
            lambda: Connection(self.answers, self.idle.append), self.host, self.port
        )
        self.every.append(connection)
        return connection

    async def fill(self, count: int) -> None:
        """Open `count` connections before the clock starts."""
        self.idle.extend([await self._open() for _ in range(count)])

    def send(self, index: int, payload: bytes) -> None:
        while self.idle:
            connection = self.idle.pop()
            if connection.transport is not None:
                connection.send(index, payload)
                return
            self.opened -= 1  # closed by the server while idle
        if self.opened >= self.limit:
            self.answers.done[index] = time.perf_counter()
            self.answers.status[index] = NO_CONNECTION
            return
        task = asyncio.ensure_future(self._open_and_send(index, payload))
        self.opening.add(task)
        task.add_done_callback(self.opening.discard)

    async def _open_and_send(self, index: int, payload: bytes) -> None:
        try:
            connection = await self._open()
        except OSError:
            self.answers.done[index] = time.perf_counter()
            self.answers.status[index] = FAILED
            return
        connection.send(index, payload)

    def close(self) -> None:
        """Drop every connection, answered or not: nothing is recorded after this."""
        for task in self.opening:
            task.cancel()
        for connection in self.every:
            connection.closed = True
            if connection.transport is not None:
                connection.transport.abort()


async def offer(
    url: str, rate: float, seconds: float, features: int, connections: int, limit: int
) -> dict[str, Any]:
    """Send `rate` requests a second for `seconds`, evenly spaced; wait for the answers."""
    payload = request_bytes(url, features)
    answers = Answers()
    pool = Pool(url, answers, limit)
    await pool.fill(connections)
    start, cpu = time.perf_counter(), time.process_time()
    for number in range(int(rate * seconds)):
        due = start + number / rate
        wait = due - time.perf_counter()
        if wait > 0:
            await asyncio.sleep(wait)
        pool.send(answers.add(due - start), payload)
    last = time.perf_counter()
    while UNANSWERED in answers.status and time.perf_counter() - last < GRACE_S:
        await asyncio.sleep(0.01)
    pool.close()
    return {
        "rate": rate,
        "seconds": seconds,
        # The client's own CPU time over the run's wall time: near 1, it could not keep up.
        "client_busy": (time.process_time() - cpu) / (time.perf_counter() - start),
        "connections_opened": pool.opened,
        "due": answers.due,
        "sent": [t - start if t else 0.0 for t in answers.sent],
        "done": [t - start if t else 0.0 for t in answers.done],
        "status": list(answers.status),
    }


def probe(url: str, seconds: float, interval: float) -> dict[str, Any]:
    """GET the health and metrics routes in turn on fresh connections for `seconds`."""
    parts = urlsplit(url)
    results: dict[str, dict[str, list[float]]] = {}
    end = time.perf_counter() + seconds
    paths = ["/v2/health/ready", "/metrics"]
    number = 0
    while time.perf_counter() < end:
        path = paths[number % len(paths)]
        number += 1
        began = time.perf_counter()
        status = _get(parts.hostname or "127.0.0.1", parts.port or 80, path)
        entry = results.setdefault(path, {"latency_s": [], "status": []})
        entry["latency_s"].append(time.perf_counter() - began)
        entry["status"].append(status)
        time.sleep(max(0.0, interval - (time.perf_counter() - began)))
    return results


def _get(host: str, port: int, path: str) -> int:
    connection = http.client.HTTPConnection(host, port, timeout=10)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        response.read()
        return response.status
    except OSError:
        return -1
    finally:
        connection.close()


def _run_loop(coroutine: Coroutine[Any, Any, dict[str, Any]]) -> dict[str, Any]:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["offer", "probe"])
    parser.add_argument("url", help="offer: the inference URL; probe: the server's base URL")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rate", type=float, default=1000.0, help="offer: requests a second")
    parser.add_argument("--features", type=int, default=512, help="offer: FP32 values a row")
    parser.add_argument("--connections", type=int, default=64, help="offer: opened up front")
    parser.add_argument("--limit", type=int, default=2048, help="offer: connections at most")
    parser.add_argument("--interval", type=float, default=0.1, help="probe: seconds between")
    args = parser.parse_args()
    if args.mode == "probe":
        result = probe(args.url, args.seconds, args.interval)
    else:
        coroutine = offer(
            args.url, args.rate, args.seconds, args.features, args.connections, args.limit
        )
        result = _run_loop(coroutine)
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
