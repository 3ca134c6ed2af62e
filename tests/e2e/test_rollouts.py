"""Rollouts end to end (README "Rollouts"): 2 workers and Redis under locust load, the judge's
lease handed over when its holder dies, and a restart that resumes a rollout at its step."""

import csv
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import yaml
from support import ADMIN, ROOT, GatewayProcess, RedisServer, make_iris_copy, wait_until

pytestmark = pytest.mark.e2e

TRAFFIC = ROOT / "loadtests" / "rollout_traffic.py"
VARIANTS = ("live", "same", "flaky", "slow")
FAIL_ABOVE = 6.8  # sepal length: 11% of the iris rows are longer, so `flaky` fails them
# Short steps and analyses, so a whole rollout fits in seconds; thresholds as shipped.
FAST = {"interval": "1s", "error_rate": {"max_increase": 0.05},
        "latency": {"min_samples": 50}, "agreement": {"min_samples": 50}}  # fmt: skip


@pytest.fixture
def rollout_repo(tmp_path: Path) -> Path:
    """`live` and `same` are the same model; `flaky` fails 11% of rows; `slow` runs 3x longer."""
    repo = tmp_path / "models"
    make_iris_copy(repo / "iris" / "live" / "model.onnx", matmuls=1)
    make_iris_copy(repo / "iris" / "same" / "model.onnx", matmuls=1)
    make_iris_copy(repo / "iris" / "flaky" / "model.onnx", matmuls=1, fail_above=FAIL_ABOVE)
    make_iris_copy(repo / "iris" / "slow" / "model.onnx", matmuls=3)
    return repo


def write_config(tmp_path: Path, repo: Path, models: list[str], **settings: Any) -> Path:
    variants = {name: {"path": f"iris/{name}/model.onnx"} for name in VARIANTS}
    config = {
        "model_repository": str(repo), "data_dir": str(tmp_path / "data"), **settings,
        "models": {m: {"variants": variants, "routing": {"live": "live"}} for m in models},
    }  # fmt: skip
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


class Locust:
    """Headless locust on the gateway until stopped; its CSV counts requests per model."""

    def __init__(self, url: str, models: list[str], out: Path) -> None:
        self._csv = out / "locust"
        out.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "locust", "-f", str(TRAFFIC), "--headless",
                   "-u", "6", "-r", "6", "-t", "120s", "--host", url, "--only-summary",
                   "--csv", str(self._csv), "--stop-timeout", "2"]  # fmt: skip
        env = {**os.environ, "GATEWAY_TEST_MODELS": ",".join(models)}
        self._log = (out / "locust.log").open("wb")
        self.process = subprocess.Popen(
            command, env=env, stdout=self._log, stderr=subprocess.STDOUT
        )

    def stop(self) -> dict[str, tuple[int, int]]:
        """Stop it (SIGTERM: users finish their request); requests and failures by model."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=30)
        self._log.close()
        with open(f"{self._csv}_stats.csv", newline="") as file:
            return {
                row["Name"]: (int(row["Request Count"]), int(row["Failure Count"]))
                for row in csv.DictReader(file)
                if row["Name"] != "Aggregated"
            }


@pytest.fixture
def locust(tmp_path: Path) -> Iterator[Callable[[str, list[str]], Locust]]:
    started: list[Locust] = []

    def start(url: str, models: list[str]) -> Locust:
        started.append(Locust(url, models, tmp_path / f"locust-{len(started)}"))
        return started[-1]

    yield start
    for runner in started:
        if runner.process.poll() is None:
            runner.process.kill()
            runner.process.wait()


def rollout(url: str, model: str) -> dict[str, Any]:
    answer: dict[str, Any] = httpx.get(f"{url}/admin/models/{model}/rollout", headers=ADMIN).json()
    return answer


def start_rollout(url: str, model: str, plan: dict[str, Any]) -> dict[str, Any]:
    response = httpx.post(f"{url}/admin/models/{model}/rollout", json=plan, headers=ADMIN)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def ended(url: str, model: str) -> dict[str, Any] | None:
    record = rollout(url, model)
    return None if record["phase"] == "Progressing" else record


def history(url: str, model: str) -> list[dict[str, Any]]:
    answer: list[dict[str, Any]] = httpx.get(
        f"{url}/admin/models/{model}/history", headers=ADMIN
    ).json()
    return answer


def test_under_load_a_good_variant_is_promoted_a_failing_or_slow_one_rolled_back(
    tmp_path: Path,
    rollout_repo: Path,
    redis_server: RedisServer,
    start_gateway: Callable[..., GatewayProcess],
    locust: Callable[[str, list[str]], Locust],
) -> None:
    """Three rollouts at once, 2 workers + Redis, locust load: the same model walks shadow,
    25% and 50% to promotion with no failed request; the one failing 11% of rows is rolled back
    within three analyses by the error check; the 3x slower one by the latency check. Each
    rollback says why in the history and restores the routing from before."""
    models = ["good", "bad", "slower"]
    config = write_config(tmp_path, rollout_repo, models, redis_url=redis_server.url)
    gateway = start_gateway(config, workers=2)
    load = locust(gateway.url, models)
    wait_until(lambda: httpx.get(f"{gateway.url}/metrics").text.count('code="200"') >= 3)
    good = start_rollout(gateway.url, "good", {"variant": "same", "analysis": FAST, "steps": [
        {"shadow": 1.0, "duration": "3s", "min_requests": 100},
        {"canary": 0.25, "duration": "3s", "min_requests": 100},
        {"canary": 0.5, "duration": "3s", "min_requests": 100}]})  # fmt: skip
    long_step = [{"canary": 0.25, "duration": "1h", "min_requests": 100}]
    slow_analysis = {**FAST, "interval": "2s"}
    start_rollout(
        gateway.url, "bad", {"variant": "flaky", "steps": long_step, "analysis": slow_analysis}
    )
    start_rollout(
        gateway.url, "slower", {"variant": "slow", "steps": long_step, "analysis": slow_analysis}
    )
    records = {m: wait_until(lambda m=m: ended(gateway.url, m), timeout=90) for m in models}
    counts = load.stop()

    promoted = records["good"]
    assert promoted["phase"] == "Healthy", [
        (c["check"], c["verdict"], c["message"]) for c in promoted["decisions"][-1]["checks"]
    ]
    assert [d["decision"] for d in promoted["decisions"]] == [
        "start",
        "advance",
        "advance",
        "promote",
    ]
    assert counts["good"][0] > 500 and counts["good"][1] == 0
    assert httpx.get(f"{gateway.url}/admin/models/good", headers=ADMIN).json()["live"] == "same"
    assert promoted["id"] == good["id"]

    failed = records["bad"]
    assert failed["phase"] == "Degraded" and failed["decisions"][-1]["decision"] == "rollback"
    assert failed["decisions"][-1]["reason"].startswith("error_rate:")
    # Within three analyses of the step's start (plus the judge's half-second tick): the SPRT
    # decides on about 30 requests of the canary, which a loaded machine's locust sends in two
    # to three windows of 2 s; a check that waited for the step's hour would take far longer.
    assert failed["decisions"][-1]["time"] - failed["started"] <= 3 * 2.0 + 0.5
    assert counts["bad"][1] > 0  # the flaky canary's answers were real failures

    slowed = records["slower"]
    assert slowed["phase"] == "Degraded" and slowed["decisions"][-1]["reason"].startswith(
        "latency:"
    )
    assert counts["slower"][1] == 0

    for model in ("bad", "slower"):
        head = history(gateway.url, model)[-1]
        assert head["analysis"]["outcome"] == "rollback"
        failing = [c for c in head["analysis"]["checks"] if c["verdict"] == "fail"]
        assert failing and failing[0]["figures"]
        assert head["state"]["live"] == "live" and head["state"]["canary"] is None
    metrics = httpx.get(f"{gateway.url}/metrics").text
    assert 'gateway_rollout_decisions_total{decision="rollback",model="bad"} 1.0' in metrics
    assert 'gateway_rollout_decisions_total{decision="promote",model="good"} 1.0' in metrics


def lease_holder_pid(redis_url: str) -> int | None:
    raw = redis.Redis.from_url(redis_url).get("gateway:rollout:lease")
    return None if raw is None else int(raw.decode().split(":")[1])


def written_once(url: str, model: str, record: dict[str, Any]) -> None:
    """Every decision of the rollout is in the history exactly once, in order."""
    numbers = [d["number"] for d in record["decisions"]]
    assert numbers == list(range(1, len(numbers) + 1))
    marked = [
        entry["analysis"]["decision"]
        for entry in history(url, model)
        if (entry.get("analysis") or {}).get("rollout") == record["id"]
    ]
    assert marked == numbers


WALK = {"variant": "same", "analysis": FAST, "steps": [
    {"shadow": 1.0, "duration": "2s", "min_requests": 100},
    {"canary": 0.25, "duration": "2s", "min_requests": 100},
    {"canary": 0.5, "duration": "2s", "min_requests": 100}]}  # fmt: skip


def test_killing_the_judge_hands_its_lease_over_and_the_rollout_goes_on(
    tmp_path: Path,
    rollout_repo: Path,
    redis_server: RedisServer,
    start_gateway: Callable[..., GatewayProcess],
    locust: Callable[[str, list[str]], Locust],
) -> None:
    """2 workers + Redis under load: SIGKILL the worker that holds the lease mid-rollout; the
    other worker takes the lease within seconds and walks the rollout to promotion, writing
    each decision once."""
    config = write_config(tmp_path, rollout_repo, ["good"], redis_url=redis_server.url)
    gateway = start_gateway(config, workers=2)
    load = locust(gateway.url, ["good"])
    start_rollout(gateway.url, "good", WALK)
    wait_until(lambda: rollout(gateway.url, "good")["step"] >= 1, timeout=60)
    judge = wait_until(lambda: lease_holder_pid(redis_server.url))
    assert judge != gateway.process.pid  # a worker, not uvicorn's supervisor
    os.kill(judge, signal.SIGKILL)
    killed = time.time()
    successor = wait_until(
        lambda: (pid := lease_holder_pid(redis_server.url)) not in (None, judge) and pid, timeout=15
    )
    record = wait_until(lambda: ended(gateway.url, "good"), timeout=60)
    load.stop()
    assert record["phase"] == "Healthy", record["decisions"][-1]
    assert successor != judge and record["decisions"][-1]["time"] > killed  # judged after
    written_once(gateway.url, "good", record)


def test_a_restart_resumes_the_rollout_at_its_step(
    tmp_path: Path,
    rollout_repo: Path,
    start_gateway: Callable[..., GatewayProcess],
    locust: Callable[[str, list[str]], Locust],
) -> None:
    """Embedded mode: stop the gateway during step 2 and start it again; the rollout is at the
    same step, counts its window from the restart, and promotes; no decision is made twice."""
    config = write_config(tmp_path, rollout_repo, ["good"])
    first = start_gateway(config)
    load = locust(first.url, ["good"])
    start_rollout(first.url, "good", WALK)
    before = wait_until(lambda: (r := rollout(first.url, "good"))["step"] >= 1 and r, timeout=60)
    load.stop()
    first.stop()
    second = start_gateway(config)
    resumed = rollout(second.url, "good")
    assert (resumed["id"], resumed["step"]) == (before["id"], before["step"])
    assert resumed["decisions"] == before["decisions"][: len(resumed["decisions"])]
    load = locust(second.url, ["good"])
    record = wait_until(lambda: ended(second.url, "good"), timeout=60)
    load.stop()
    assert record["phase"] == "Healthy", record["decisions"][-1]
    written_once(second.url, "good", record)
