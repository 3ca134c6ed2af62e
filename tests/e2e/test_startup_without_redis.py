"""Start-up while Redis is down: the last-known routing is served, never the config file's, and a
process that has none stays not ready until Redis answers (README, "Several workers and
replicas")."""

import re
from collections.abc import Callable
from pathlib import Path

import httpx
import orjson
import pytest
from support import ADMIN, GatewayProcess, RedisServer, iris_body, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.redis]

STALE = re.compile(r"^gateway_routing_stale (\S+)$", re.MULTILINE)


def admin(gateway: GatewayProcess, method: str, path: str, body: object = None) -> httpx.Response:
    return httpx.request(method, f"{gateway.url}{path}", json=body, headers=ADMIN, timeout=10)


def stale(client: httpx.Client) -> float:
    match = STALE.search(client.get("/metrics").text)
    assert match, "gateway_routing_stale is not exported"
    return float(match.group(1))


def fresh_client(url: str) -> httpx.Client:
    """A new connection per request, so requests spread over all workers."""
    return httpx.Client(base_url=url, limits=httpx.Limits(max_keepalive_connections=0), timeout=10)


@pytest.mark.parametrize("persist", [True, False], ids=["redis-keeps-data", "redis-lost-data"])
def test_restart_during_outage_serves_the_rolled_back_routing(
    persist: bool,
    redis_server: RedisServer,
    write_config: Callable[..., Path],
    start_gateway: Callable[..., GatewayProcess],
    tmp_path: Path,
) -> None:
    """Flip, bad canary, rollback; Redis dies; a restarted 2-worker gateway serves the rolled-back
    revision with gateway_routing_stale 1; Redis back (with or without its data), the gauge is 0
    and the routing stays."""
    redis_server.persist = persist
    redis_server.stop()
    redis_server.start()
    config = write_config(redis_url=redis_server.url)
    first = start_gateway(config, workers=2)
    assert admin(first, "POST", "/admin/models/iris/flip", {"to": "green"}).status_code == 200
    bad = {"variant": "mlp", "weight": 0.5}
    assert admin(first, "PUT", "/admin/models/iris/canary", bad).status_code == 200
    rolled_back = admin(first, "POST", "/admin/models/iris/rollback").json()
    assert (rolled_back["revision"], rolled_back["live"], rolled_back["canary"]) == (
        4,
        "green",
        None,
    )
    last_known = tmp_path / "data" / "last-known" / "iris.json"
    wait_until(lambda: orjson.loads(last_known.read_bytes())["revision"] == 4)
    first.stop()
    redis_server.stop()

    second = start_gateway(config, workers=2)
    with fresh_client(second.url) as client:
        for _ in range(40):
            served = client.post("/v2/models/iris/infer", json=iris_body())
            assert served.status_code == 200
            assert (served.headers["x-gateway-variant"], served.headers["x-gateway-revision"]) == (
                "green",
                "4",
            )
            assert stale(client) == 1
        assert admin(second, "GET", "/admin/models/iris").json() == rolled_back
    warning = f"serving the last-known routing of iris, revision 4 (rollback 2), from {last_known}"
    assert second.output().count(warning) == 2  # once per worker

    redis_server.start()
    with fresh_client(second.url) as client:
        wait_until(lambda: all(stale(client) == 0 for _ in range(10)))
        wait_until(lambda: second.output().count("Redis answers: routing of iris confirmed") == 2)
        served = client.post("/v2/models/iris/infer", json=iris_body())
        assert served.headers["x-gateway-revision"] == "4"
    history = admin(second, "GET", "/admin/models/iris/history").json()
    assert history[-1]["revision"] == 4 and history[-1]["action"] == "rollback 2"
    assert len(history) == (4 if persist else 1)  # a store that lost its data gets the head back
    assert admin(second, "POST", "/admin/models/iris/flip", {"to": "blue"}).json()["revision"] == 5


def test_no_last_known_routing_stays_unready_until_redis_answers(
    redis_server: RedisServer, write_config: Callable[..., Path], tmp_path: Path
) -> None:
    """A fresh data_dir with Redis down: ready and inference are 503 saying routing is unknown;
    once Redis answers, the gateway seeds the empty store from the config and serves it."""
    config = write_config(redis_url=redis_server.url)
    redis_server.stop()
    gateway = GatewayProcess(config, 1, {"GATEWAY_ADMIN_TOKEN": "secret"}, tmp_path / "gw.log")
    try:
        with fresh_client(gateway.url) as client:
            wait_until(lambda: client.get("/v2/health/live").status_code == 200, timeout=60)
            assert "iris has no last-known routing" in gateway.output()
            unready = client.get("/v2/health/ready")
            assert unready.status_code == 503 and unready.json()["ready"] is False
            assert (
                "the routing of iris, mlp is unknown until Redis answers" in unready.json()["error"]
            )
            for path in ("/v2/models/iris/infer", "/v2/models/iris/versions/blue/infer"):
                refused = client.post(path, json=iris_body())
                assert refused.status_code == 503, path
                assert "unknown until Redis answers" in refused.json()["error"]
            assert stale(client) == 0  # nothing served, so nothing stale

            redis_server.start()
            wait_until(lambda: client.get("/v2/health/ready").status_code == 200)
            served = client.post("/v2/models/iris/infer", json=iris_body())
            assert (served.headers["x-gateway-variant"], served.headers["x-gateway-revision"]) == (
                "blue",
                "1",
            )
        history = admin(gateway, "GET", "/admin/models/iris/history").json()
        assert [(h["revision"], h["action"]) for h in history] == [(1, "init")]
    finally:
        gateway.stop()
