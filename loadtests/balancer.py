"""A small TCP load balancer that sends new connections only to backends that answer ready.

    python loadtests/balancer.py --listen 127.0.0.1:8080 --backend 127.0.0.1:8001 \\
                                 --backend 127.0.0.1:8002

It stands in for a Kubernetes Service in front of gateway replicas (loadtests/rolling_restart.py):
every `check_interval_s` it asks each backend `GET /v2/health/ready`, and each new client
connection goes to the next backend (round robin) whose last answer was 200, the way a Service
sends connections only to endpoints whose readiness probe passes (Kubernetes docs, "Service",
and "Pod Lifecycle": a terminating pod's endpoints are no longer ready). Balancing is per
connection, as kube-proxy's is: a kept-alive connection stays on its backend until one side
closes it, which is why a draining gateway answers with `Connection: close`.

It never retries: a connection it cannot open to a ready backend is closed at once, so the
client sees the failure, as it would through kube-proxy. With no ready backend, a new
connection waits up to `wait_for_backend_s` for one, then is closed.
"""

import argparse
import asyncio
import contextlib
import itertools
import sys
from collections import Counter
from dataclasses import dataclass, field

Address = tuple[str, int]
READY_REQUEST = b"GET /v2/health/ready HTTP/1.1\r\nHost: balancer\r\nConnection: close\r\n\r\n"
COPY_CHUNK = 65536


@dataclass
class BalancerStats:
    """What the balancer did: connections per backend, and the ones it could not place."""

    connections: Counter[str] = field(default_factory=Counter)
    connect_failures: Counter[str] = field(default_factory=Counter)
    no_ready_backend: int = 0
    ready_changes: list[tuple[str, bool]] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return {
            "connections": dict(self.connections),
            "connect_failures": dict(self.connect_failures),
            "no_ready_backend": self.no_ready_backend,
            "ready_changes": len(self.ready_changes),
        }


def name(address: Address) -> str:
    return f"{address[0]}:{address[1]}"


class Balancer:
    """Forward each client connection to a ready backend; poll readiness in the background."""

    def __init__(
        self,
        backends: list[Address],
        check_interval_s: float = 0.1,
        check_timeout_s: float = 0.5,
        wait_for_backend_s: float = 5.0,
    ) -> None:
        self.backends = backends
        self.check_interval_s = check_interval_s
        self.check_timeout_s = check_timeout_s
        self.wait_for_backend_s = wait_for_backend_s
        self.ready: set[Address] = set()
        self.stats = BalancerStats()
        self._turn = itertools.cycle(range(len(backends)))
        self._server: asyncio.Server | None = None
        self._checks: asyncio.Task[None] | None = None

    async def start(self, host: str, port: int) -> int:
        """Listen on host:port (0: a free port); the port listened on."""
        await self._check_all()
        self._checks = asyncio.create_task(self._check_forever())
        self._server = await asyncio.start_server(self._serve, host, port)
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        if self._checks is not None:
            self._checks.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._checks

    # --- readiness -----------------------------------------------------------------------------

    async def _check_forever(self) -> None:
        while True:
            await asyncio.sleep(self.check_interval_s)
            await self._check_all()

    async def _check_all(self) -> None:
        answers = await asyncio.gather(*(self._is_ready(b) for b in self.backends))
        for backend, ready in zip(self.backends, answers, strict=True):
            if ready != (backend in self.ready):
                self.stats.ready_changes.append((name(backend), ready))
                (self.ready.add if ready else self.ready.discard)(backend)

    async def _is_ready(self, backend: Address) -> bool:
        """Did `GET /v2/health/ready` answer 200 within the check timeout?"""
        try:
            async with asyncio.timeout(self.check_timeout_s):
                reader, writer = await asyncio.open_connection(*backend)
                try:
                    writer.write(READY_REQUEST)
                    status_line = await reader.readline()
                finally:
                    writer.close()
        except (OSError, TimeoutError):
            return False
        return status_line.split(b" ")[1:2] == [b"200"]

    # --- forwarding ----------------------------------------------------------------------------

    async def _pick(self) -> Address | None:
        """The next ready backend in turn; waits a while when none is ready."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.wait_for_backend_s
        while True:
            for _ in self.backends:
                backend = self.backends[next(self._turn)]
                if backend in self.ready:
                    return backend
            if loop.time() > deadline:
                return None
            await asyncio.sleep(self.check_interval_s / 4)

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        backend = await self._pick()
        if backend is None:
            self.stats.no_ready_backend += 1
            client_w.close()
            return
        try:
            backend_r, backend_w = await asyncio.open_connection(*backend)
        except OSError:
            self.stats.connect_failures[name(backend)] += 1
            client_w.close()
            return
        self.stats.connections[name(backend)] += 1
        await asyncio.gather(_copy(client_r, backend_w), _copy(backend_r, client_w))
        for writer in (client_w, backend_w):
            writer.close()


async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Bytes from `reader` to `writer` until end of file, then a half-close (FIN) onwards."""
    try:
        while data := await reader.read(COPY_CHUNK):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof() and not writer.is_closing():
            writer.write_eof()
    except OSError:  # one side reset the connection: close the other at once
        writer.close()


def _address(text: str) -> Address:
    host, _, port = text.rpartition(":")
    return host or "127.0.0.1", int(port)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", type=_address, default=("127.0.0.1", 8080))
    parser.add_argument("--backend", type=_address, action="append", required=True)
    parser.add_argument("--check-interval", type=float, default=0.1, help="seconds")
    args = parser.parse_args(argv)

    async def run() -> None:
        balancer = Balancer(args.backend, check_interval_s=args.check_interval)
        port = await balancer.start(*args.listen)
        print(f"balancing 127.0.0.1:{port} over {', '.join(map(name, args.backend))}")
        await asyncio.Event().wait()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
