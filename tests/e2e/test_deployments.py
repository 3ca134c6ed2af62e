"""Deployment patterns against real `gateway serve` processes sharing a real redis-server."""

import math
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import yaml
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.retry import Retry
from support import (
    ADMIN,
    IRIS_ROWS,
    RECORD_FIELDS,
    GatewayProcess,
    RedisServer,
    iris_body,
    wait_until,
)

pytestmark = pytest.mark.e2e


def fresh_client(url: str) -> httpx.Client:
    """A client that opens a new connection per request, so requests spread over all workers."""
    return httpx.Client(base_url=url, limits=httpx.Limits(max_keepalive_connections=0), timeout=10)


def admin(gateway: GatewayProcess, method: str, path: str, body: object = None) -> httpx.Response:
    return httpx.request(method, f"{gateway.url}{path}", json=body, headers=ADMIN, timeout=10)


def serving_everywhere(client: httpx.Client, revision: int, answers: int = 20) -> None:
    """Wait until `answers` requests in a row, on fresh connections (any worker), were served
    at `revision` or later: the README allows every worker up to 1 s to switch."""

    def switched() -> bool:
        return all(
            int(
                client.post("/v2/models/iris/infer", json=iris_body()).headers["x-gateway-revision"]
            )
            >= revision
            for _ in range(answers)
        )

    wait_until(switched, timeout=5)


def within_five_sigma(count: int, n: int, p: float) -> bool:
    return abs(count - n * p) <= 5 * math.sqrt(n * p * (1 - p))


@pytest.fixture
def cluster(
    redis_server: RedisServer,
    write_config: Callable[..., Path],
    start_gateway: Callable[..., GatewayProcess],
) -> GatewayProcess:
    """Two workers sharing routing and the shadow log through Redis."""
    return start_gateway(write_config(redis_url=redis_server.url), workers=2)


class Load:
    """Client threads sending inferences until stopped; every answer's status and revision kept."""

    def __init__(self, url: str, threads: int = 3) -> None:
        self.url = url
        self.results: list[tuple[float, int, int]] = []  # (time, status, revision)
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run) for _ in range(threads)]

    def _run(self) -> None:
        with fresh_client(self.url) as client:
            while not self._stop.is_set():
                try:
                    response = client.post("/v2/models/iris/infer", json=iris_body())
                    revision = int(response.headers.get("x-gateway-revision", -1))
                    self.results.append((time.monotonic(), response.status_code, revision))
                except httpx.HTTPError:
                    self.results.append((time.monotonic(), 0, -1))

    @contextmanager
    def running(self) -> Iterator["Load"]:
        for thread in self._threads:
            thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            for thread in self._threads:
                thread.join()

    def failures(self) -> list[tuple[float, int, int]]:
        return [r for r in self.results if r[1] != 200]


def test_canary_split_sticky_users_and_ramp(cluster: GatewayProcess) -> None:
    """Across 2 workers: the canary share is within 5 sigma of its weight; sticky users keep
    their variant on every worker, and ramping 0.05 -> 0.25 -> 1.0 never moves one back."""
    started = admin(
        cluster, "PUT", "/admin/models/iris/canary", {"variant": "green", "weight": 0.2}
    )
    assert started.status_code == 200
    n = 600
    with fresh_client(cluster.url) as client:
        serving_everywhere(client, started.json()["revision"])
        roles = [
            client.post("/v2/models/iris/infer", json=iris_body()).headers["x-gateway-role"]
            for _ in range(n)
        ]
        assert within_five_sigma(roles.count("canary"), n, 0.2)
        users = [f"user-{i}" for i in range(100)]
        previous: set[str] = set()
        for weight in (0.05, 0.25, 1.0):
            ramped = admin(
                cluster, "PUT", "/admin/models/iris/canary", {"variant": "green", "weight": weight}
            )
            assert ramped.status_code == 200
            serving_everywhere(client, ramped.json()["revision"])
            on_canary = set()
            for user in users:
                seen = {
                    client.post(
                        "/v2/models/iris/infer", json=iris_body(), headers={"x-user-id": user}
                    ).headers["x-gateway-variant"]
                    for _ in range(3)
                }
                assert len(seen) == 1, (user, seen)  # the same answer from whichever worker
                if seen == {"green"}:
                    on_canary.add(user)
            assert previous <= on_canary
            previous = on_canary
        assert previous == set(users)


def test_changes_reach_every_worker_within_a_second_without_failures(
    cluster: GatewayProcess,
) -> None:
    """Under threaded load, 20 flips and rollbacks each reach both workers within 1 s; no request fails."""
    delays = []
    with Load(cluster.url).running() as load:
        wait_until(lambda: len(load.results) > 20)
        for i in range(20):
            if i % 4 == 3:
                answer = admin(cluster, "POST", "/admin/models/iris/rollback")
            else:
                answer = admin(
                    cluster,
                    "POST",
                    "/admin/models/iris/flip",
                    {"to": "green" if i % 2 == 0 else "blue"},
                )
            assert answer.status_code == 200, answer.text
            revision, changed_at = answer.json()["revision"], time.monotonic()
            # Settled: 30 answers in a row at the new revision, on fresh connections to any worker.
            wait_until(
                lambda revision=revision: (  # type: ignore[misc]
                    len(load.results) > 30 and all(r[2] == revision for r in load.results[-30:])
                ),
                timeout=5,
            )
            stale = [t for t, _, rev in load.results if t >= changed_at and rev < revision]
            delays.append(max(stale) - changed_at if stale else 0.0)
    print(
        f"\npropagation over 20 changes: median {statistics.median(delays) * 1000:.1f} ms, max {max(delays) * 1000:.1f} ms, requests {len(load.results)}"
    )
    assert max(delays) < 1.0
    assert load.failures() == []
    history = admin(cluster, "GET", "/admin/models/iris/history").json()
    assert [h["revision"] for h in history] == list(range(1, len(history) + 1))


def test_shadow_records_land_in_redis(cluster: GatewayProcess, redis_server: RedisServer) -> None:
    """Mirrored requests from both workers write records with every §5 field to the stream."""
    assert (
        admin(
            cluster, "PUT", "/admin/models/iris/shadows", [{"variant": "green", "sample": 1.0}]
        ).status_code
        == 200
    )
    with fresh_client(cluster.url) as client:
        for i in range(20):
            client.post(
                "/v2/models/iris/infer",
                json=iris_body(IRIS_ROWS),
                headers={"x-request-id": f"req-{i}"},
            )
    store = redis.Redis.from_url(redis_server.url, decode_responses=True)
    entries = wait_until(lambda: (e := store.xrange("gateway:shadow:iris")) and len(e) >= 20 and e)
    records = [fields for _, fields in entries]
    assert {r["request_id"] for r in records} == {f"req-{i}" for i in range(20)}
    assert all(set(r) == RECORD_FIELDS | {"inputs"} for r in records)
    assert {r["agree"] for r in records} == {"1"} and {r["shadow_variant"] for r in records} == {
        "green"
    }


def test_redis_outage_freezes_routing_and_recovers(
    redis_server: RedisServer,
    write_config: Callable[..., Path],
    start_gateway: Callable[..., GatewayProcess],
) -> None:
    """Killing Redis under load fails no inference; admin changes get 503; back up, shadow
    logging resumes and changes work again."""
    redis_server.persist = True
    redis_server.stop()
    redis_server.start()
    gateway = start_gateway(write_config(redis_url=redis_server.url), workers=2)
    assert (
        admin(gateway, "PUT", "/admin/models/iris/shadows", [{"variant": "mlp"}]).status_code == 200
    )
    # The test's own client rides out the restart like the gateway does: by retrying.
    store = redis.Redis.from_url(
        redis_server.url,
        retry=Retry(ExponentialBackoff(), 10),
        retry_on_error=[RedisConnectionError],
    )
    with Load(gateway.url).running() as load:
        wait_until(lambda: store.xlen("gateway:shadow:iris") > 10)
        redis_server.stop()
        outage_started = len(load.results)
        wait_until(lambda: len(load.results) > outage_started + 200)
        refused = admin(gateway, "POST", "/admin/models/iris/flip", {"to": "green"})
        assert refused.status_code == 503 and "Redis" in refused.json()["error"]
        redis_server.start()
        logged = store.xlen("gateway:shadow:iris")
        wait_until(lambda: store.xlen("gateway:shadow:iris") > logged + 10, timeout=20)
    assert load.failures() == []
    assert len(load.results) > outage_started + 200
    assert {rev for _, _, rev in load.results} == {2}  # routing stayed frozen at its last state
    assert (
        admin(gateway, "POST", "/admin/models/iris/flip", {"to": "green"}).json()["revision"] == 3
    )


@pytest.mark.parametrize("mode", ["embedded", "redis"])
def test_restart_keeps_routing_and_history(
    mode: str,
    request: pytest.FixtureRequest,
    write_config: Callable[..., Path],
    start_gateway: Callable[..., GatewayProcess],
) -> None:
    """After flip, canary and rollback, a restarted gateway serves the same revision and history."""
    overrides: dict[str, Any] = {}
    if mode == "redis":
        overrides["redis_url"] = request.getfixturevalue("redis_server").url
    config = write_config(**overrides)
    first = start_gateway(config)
    admin(first, "POST", "/admin/models/iris/flip", {"to": "green"})
    admin(first, "PUT", "/admin/models/iris/canary", {"variant": "mlp", "weight": 0.3})
    admin(first, "POST", "/admin/models/iris/rollback")
    before = admin(first, "GET", "/admin/models/iris").json()
    history = admin(first, "GET", "/admin/models/iris/history").json()
    first.stop()
    second = start_gateway(config)
    assert admin(second, "GET", "/admin/models/iris").json() == before
    assert admin(second, "GET", "/admin/models/iris/history").json() == history
    assert before["live"] == "green" and before["revision"] == 4
    served = httpx.post(f"{second.url}/v2/models/iris/infer", json=iris_body())
    assert (
        served.headers["x-gateway-variant"] == "green"
        and served.headers["x-gateway-revision"] == "4"
    )


def test_reload_reaches_every_worker_without_failed_requests(
    cluster: GatewayProcess, tmp_path: Path
) -> None:
    """A reload that adds a variant loads it in both workers while load runs; no request fails."""
    config_path = tmp_path / "gateway.yaml"
    config = yaml.safe_load(config_path.read_text())
    config["models"]["iris"]["variants"]["teal"] = {"path": "iris/3/model.onnx"}
    config_path.write_text(yaml.safe_dump(config))
    with Load(cluster.url).running() as load:
        wait_until(lambda: len(load.results) > 20)
        reloaded = admin(cluster, "POST", "/admin/reload")
        assert reloaded.status_code == 200, reloaded.text
        wait_until(lambda: cluster.output().count("reloaded ") >= 2)  # both workers, logged
        with fresh_client(cluster.url) as client:
            # Every worker loads the new variant: 30 answers in a row on fresh connections.
            def all_serve_teal() -> bool:
                return all(
                    client.post("/v2/models/iris/versions/teal/infer", json=iris_body()).status_code
                    == 200
                    for _ in range(30)
                )

            wait_until(all_serve_teal, timeout=10)
        flipped = admin(cluster, "POST", "/admin/models/iris/flip", {"to": "teal"})
        assert flipped.status_code == 200
        revision = flipped.json()["revision"]
        wait_until(lambda: all(r[2] == revision for r in load.results[-30:]))
    assert load.failures() == []
    assert cluster.output().count("reloaded ") == 2  # once per worker, no echo between them
