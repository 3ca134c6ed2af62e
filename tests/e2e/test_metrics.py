"""/metrics of a real gateway, read with prometheus_client's parser, with 1 and 2 workers."""

import os
import signal
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from support import ADMIN, GatewayProcess, RedisServer, iris_body, wait_until

pytestmark = pytest.mark.e2e

EXPECTED = {
    # name: (type, labels of its samples, without histogram's `le`)
    "gateway_requests": ("counter", {"model", "variant", "role", "code"}),
    "gateway_request_duration_seconds": ("histogram", {"model", "variant", "role"}),
    "gateway_inference_duration_seconds": ("histogram", {"model", "variant"}),
    "gateway_shadow_records": ("counter", {"model", "variant", "outcome"}),
    "gateway_shadow_comparisons": ("counter", {"model", "variant", "agree"}),
    "gateway_canary_weight": ("gauge", {"model", "variant"}),
    "gateway_live_variant": ("gauge", {"model", "variant"}),
    "gateway_routing_revision": ("gauge", {"model"}),
    "gateway_inflight_requests": ("gauge", set()),
    "gateway_routing_stale": ("gauge", set()),
}


def scrape(gateway: GatewayProcess) -> dict[str, object]:
    text = httpx.get(f"{gateway.url}/metrics").text
    return {family.name: family for family in text_string_to_metric_families(text)}


def samples(family: object, suffix: str = "") -> dict[tuple[tuple[str, str], ...], float]:
    return {
        tuple(sorted((k, v) for k, v in s.labels.items() if k != "le")): s.value
        for s in family.samples  # type: ignore[attr-defined]
        if s.name == family.name + suffix  # type: ignore[attr-defined]
    }


def request_key(variant: str, role: str, code: str) -> tuple[tuple[str, str], ...]:
    return (("code", code), ("model", "iris"), ("role", role), ("variant", variant))


@pytest.mark.parametrize("workers", [1, 2])
def test_every_metric_with_counts_that_match(
    workers: int,
    request: pytest.FixtureRequest,
    write_config: Callable[..., Path],
    start_gateway: Callable[..., GatewayProcess],
) -> None:
    """Every metric has its type and labels; counts equal what was sent per variant (summed over workers)."""
    overrides = {}
    if workers > 1:
        overrides["redis_url"] = request.getfixturevalue("redis_server").url
    gateway = start_gateway(write_config(**overrides), workers=workers)
    httpx.put(
        f"{gateway.url}/admin/models/iris/canary",
        json={"variant": "green", "weight": 0.0},
        headers=ADMIN,
    )
    httpx.put(f"{gateway.url}/admin/models/iris/shadows", json=[{"variant": "mlp"}], headers=ADMIN)
    sent = {"blue": 17, "green": 9}
    with httpx.Client(
        base_url=gateway.url, limits=httpx.Limits(max_keepalive_connections=0)
    ) as client:
        for _ in range(sent["blue"]):
            assert client.post("/v2/models/iris/infer", json=iris_body()).status_code == 200
        for _ in range(sent["green"]):
            assert (
                client.post("/v2/models/iris/versions/green/infer", json=iris_body()).status_code
                == 200
            )
        for _ in range(3):
            assert client.post("/v2/models/iris/infer", content=b"{").status_code == 400
    expected_requests = {
        request_key("blue", "live", "200"): sent["blue"],
        request_key("green", "direct", "200"): sent["green"],
        request_key("blue", "live", "400"): 3,
    }

    families = scrape(gateway)  # every worker's counts, exact at once
    assert samples(families["gateway_requests"], "_total") == expected_requests
    for name, (kind, labels) in EXPECTED.items():
        assert families[name].type == kind, name  # type: ignore[attr-defined]
        for sample in families[name].samples:  # type: ignore[attr-defined]
            assert set(sample.labels) - {"le"} == labels, (name, sample.labels)
    durations = samples(families["gateway_request_duration_seconds"], "_count")
    assert durations[(("model", "iris"), ("role", "live"), ("variant", "blue"))] == sent["blue"] + 3
    buckets = [
        s.labels["le"]
        for s in families["gateway_request_duration_seconds"].samples
        if s.name.endswith("_bucket")
    ]  # type: ignore[attr-defined]
    assert "0.0001" in buckets and "10.0" in buckets
    assert samples(families["gateway_routing_revision"]) == {
        (("model", "iris"),): 3.0,
        (("model", "mlp"),): 1.0,
    }
    live = samples(families["gateway_live_variant"])
    assert (
        live[(("model", "iris"), ("variant", "blue"))] == 1.0
        and live[(("model", "iris"), ("variant", "green"))] == 0.0
    )
    assert len([k for k in live if ("model", "iris") in k]) == 5  # a series for every variant
    assert samples(families["gateway_inflight_requests"]) == {(): 0.0}
    assert samples(families["gateway_routing_stale"]) == {(): 0.0}
    shadow = samples(scrape(gateway)["gateway_shadow_records"], "_total")
    assert (
        shadow.get((("model", "iris"), ("outcome", "logged"), ("variant", "mlp")), 0)
        <= sent["blue"]
    )


Counters = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def counters(gateway: GatewayProcess) -> Counters:
    """Every sample that only ever grows: counters, and histograms' buckets, counts and sums."""
    with httpx.Client(limits=httpx.Limits(max_keepalive_connections=0)) as client:
        text = client.get(f"{gateway.url}/metrics").text  # a fresh connection: any worker
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        if family.type in ("counter", "histogram")
        for sample in family.samples
    }


def worker_pids(gateway: GatewayProcess) -> set[int]:
    """uvicorn's worker processes: the server's children that multiprocessing spawned."""
    pid = gateway.process.pid
    children = " ".join(p.read_text() for p in Path(f"/proc/{pid}/task").glob("*/children"))
    return {
        int(child)
        for child in children.split()
        if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes()  # not resource_tracker
    }


def test_two_workers_count_exactly_and_never_go_down_across_a_worker_kill(
    redis_server: RedisServer,
    write_config: Callable[..., Path],
    start_gateway: Callable[..., GatewayProcess],
) -> None:
    """With 2 workers every scrape (each on a fresh connection, so either worker answers) counts
    exactly the requests answered so far and no counter goes down; after a worker is SIGKILLed
    and restarted by uvicorn, its counts are still in the sum."""
    gateway = start_gateway(write_config(redis_url=redis_server.url), workers=2)
    answered = {"200": 0, "400": 0}
    previous: Counters = {}

    def rounds(count: int) -> None:
        nonlocal previous
        for _ in range(count):
            for _ in range(3):  # httpx.post: a fresh connection each, to either worker
                assert (
                    httpx.post(f"{gateway.url}/v2/models/iris/infer", json=iris_body()).status_code
                    == 200
                )
            assert (
                httpx.post(f"{gateway.url}/v2/models/iris/infer", content=b"{").status_code == 400
            )
            answered["200"] += 3
            answered["400"] += 1
            for _ in range(6):
                now = counters(gateway)
                for code, sent in answered.items():
                    assert (
                        now[("gateway_requests_total", request_key("blue", "live", code))] == sent
                    )
                blue = (("model", "iris"), ("role", "live"), ("variant", "blue"))
                assert now[("gateway_request_duration_seconds_count", blue)] == sum(
                    answered.values()
                )
                runs = (("model", "iris"), ("variant", "blue"))
                assert now[("gateway_inference_duration_seconds_count", runs)] == answered["200"]
                went_down = {
                    key: (value, now.get(key))
                    for key, value in previous.items()
                    if now.get(key, 0.0) < value
                }
                assert not went_down
                previous = now

    rounds(20)
    workers = worker_pids(gateway)
    assert len(workers) == 2
    killed = min(workers)
    os.kill(killed, signal.SIGKILL)
    started = "Application startup complete."
    wait_until(lambda: killed not in (pids := worker_pids(gateway)) and len(pids) == 2, timeout=20)
    wait_until(lambda: gateway.output().count(started) == 3, timeout=20)  # the new one serves
    rounds(20)
