"""Shadow mirroring in embedded mode: records in the JSON-lines file, never touching the caller."""

import asyncio
import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from app.conftest import AppClient
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from support import (
    ADMIN,
    IRIS_LABELS,
    IRIS_ROWS,
    RECORD_FIELDS,
    base_config,
    iris_body,
    make_renamed_model,
)

from gateway.http import create_app
from gateway.settings import load_settings


async def records(path: Path, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
    """Poll the shadow log file until it has `count` records."""
    deadline = time.monotonic() + timeout
    while True:
        lines = path.read_text().splitlines() if path.exists() else []
        if len(lines) >= count:
            return [json.loads(line) for line in lines]
        assert time.monotonic() < deadline, f"only {len(lines)} of {count} shadow records"
        await asyncio.sleep(0.02)


async def shadow_counts(client: httpx.AsyncClient) -> dict[tuple[str, str], float]:
    text = (await client.get("/metrics")).text
    return {
        (s.labels["variant"], s.labels["outcome"]): s.value
        for f in text_string_to_metric_families(text) if f.name == "gateway_shadow_records"
        for s in f.samples if s.name.endswith("_total")
    }  # fmt: skip


async def test_shadow_records_have_every_field(make_client: AppClient, tmp_path: Path) -> None:
    """Each mirrored request writes one record with all the README's shadow log description fields to data_dir/shadow."""
    client = await make_client()
    await client.put(
        "/admin/models/iris/shadows", json=[{"variant": "green", "sample": 1.0}], headers=ADMIN
    )
    for i in range(5):
        response = await client.post(
            "/v2/models/iris/infer", json=iris_body(IRIS_ROWS), headers={"x-request-id": f"r{i}"}
        )
        assert response.headers["x-gateway-variant"] == "blue"
    found = await records(tmp_path / "data" / "shadow" / "iris.jsonl", 5)
    assert {r["request_id"] for r in found} == {f"r{i}" for i in range(5)}
    record = found[0]
    assert set(record) == RECORD_FIELDS | {"inputs"}
    assert (
        record["model"] == "iris"
        and record["live_variant"] == "blue"
        and record["shadow_variant"] == "green"
    )
    assert record["revision"] == "2" and record["agree"] == "1"
    assert json.loads(record["live_output"])["label"] == IRIS_LABELS
    assert json.loads(record["shadow_output"])["label"] == IRIS_LABELS
    assert np.allclose(json.loads(record["inputs"])["input"], IRIS_ROWS)
    assert (
        float(record["live_ms"]) > 0
        and float(record["shadow_ms"]) > 0
        and int(record["ts"]) > 1.7e12
    )
    assert (await shadow_counts(client))[("green", "logged")] == 5


async def test_log_inputs_false_keeps_inputs_out(
    make_client: AppClient, tmp_path: Path, write_config: Any
) -> None:
    """With log_inputs: false the records carry no `inputs` field."""
    client = await make_client()
    config = (
        (tmp_path / "gateway.yaml")
        .read_text()
        .replace("sticky_header: x-user-id", "sticky_header: x-user-id\n    log_inputs: false")
    )
    assert "log_inputs: false" in config
    (tmp_path / "gateway.yaml").write_text(config)
    await client.post("/admin/reload", headers=ADMIN)
    await client.put("/admin/models/iris/shadows", json=[{"variant": "mlp"}], headers=ADMIN)
    await client.post("/v2/models/iris/infer", json=iris_body())
    (record,) = await records(tmp_path / "data" / "shadow" / "iris.jsonl", 1)
    assert set(record) == RECORD_FIELDS


async def test_failing_and_slow_shadows_never_touch_the_caller(
    make_client: AppClient, tmp_path: Path
) -> None:
    """A shadow that raises or is slow leaves the caller's answer and status as without shadows."""
    client = await make_client()
    body = iris_body(IRIS_ROWS)  # a batch of 3: the `failing` variant raises on it
    plain = (await client.post("/v2/models/iris/infer", json=body)).json()
    await client.put(
        "/admin/models/iris/shadows",
        json=[{"variant": "failing"}, {"variant": "slow"}],
        headers=ADMIN,
    )
    for _ in range(3):
        response = await client.post("/v2/models/iris/infer", json=body)
        assert response.status_code == 200
        assert response.json()["outputs"] == plain["outputs"]
    found = await records(tmp_path / "data" / "shadow" / "iris.jsonl", 6, timeout=30)
    failing = [r for r in found if r["shadow_variant"] == "failing"]
    assert len(failing) == 3 and all(
        r["agree"] == "0" and "error" in json.loads(r["shadow_output"]) for r in failing
    )
    counts = await shadow_counts(client)
    assert counts[("failing", "error")] == 3 and counts[("slow", "logged")] == 3


async def test_full_shadow_queue_drops_and_counts(make_client: AppClient) -> None:
    """When shadows cannot keep up, extra runs are dropped and counted; callers still get 200."""
    client = await make_client(shadow_queue_size=1)
    await client.put("/admin/models/iris/shadows", json=[{"variant": "slow"}], headers=ADMIN)
    statuses = [
        (await client.post("/v2/models/iris/infer", json=iris_body())).status_code
        for _ in range(10)
    ]
    assert statuses == [200] * 10
    assert (await shadow_counts(client)).get(("slow", "dropped"), 0) >= 5


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="SCHED_IDLE is Linux's")
async def test_shadow_threads_run_at_idle_priority(make_client: AppClient, tmp_path: Path) -> None:
    """Shadow runs and shadow-log writes happen on threads the kernel runs only when the core has
    nothing else to do, so they never take CPU time from callers; the records still land."""
    client = await make_client()
    await client.put(
        "/admin/models/iris/shadows", json=[{"variant": "green", "sample": 1.0}], headers=ADMIN
    )
    await client.post("/v2/models/iris/infer", json=iris_body())
    await records(tmp_path / "data" / "shadow" / "iris.jsonl", 1)  # both threads have worked
    policies = {
        thread.name: os.sched_getscheduler(thread.native_id or 0)
        for thread in threading.enumerate()
        if thread.name.startswith("gateway-shadow")
    }
    assert len(policies) == 2 and set(policies.values()) == {os.SCHED_IDLE}, policies
    assert os.sched_getscheduler(0) == os.SCHED_OTHER  # the event loop's thread is untouched


async def test_stopping_writes_or_counts_every_shadow_run(
    write_config: Callable[..., Path], tmp_path: Path
) -> None:
    """At shutdown the queued shadow runs get a few seconds to finish; what they cannot finish
    is stopped or dropped, and every run still ends up logged, errored or dropped, once."""
    registry = CollectorRegistry()
    app = create_app(
        load_settings(write_config(), env={"GATEWAY_ADMIN_TOKEN": "secret"}), registry=registry
    )
    lifespan = app.router.lifespan_context(app)
    await lifespan.__aenter__()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as c:
        await c.put("/admin/models/iris/shadows", json=[{"variant": "slow"}], headers=ADMIN)
        for _ in range(300):  # far more slow runs than the shutdown's 5 s can finish
            assert (await c.post("/v2/models/iris/infer", json=iris_body())).status_code == 200
    await lifespan.__aexit__(None, None, None)

    def count(outcome: str) -> float:
        labels = {"model": "iris", "variant": "slow", "outcome": outcome}
        return registry.get_sample_value("gateway_shadow_records_total", labels) or 0.0

    assert count("logged") + count("error") + count("dropped") == 300
    assert count("dropped") > 0  # the test would not test the deadline otherwise
    lines = (tmp_path / "data" / "shadow" / "iris.jsonl").read_text().splitlines()
    assert len(lines) == count("logged") + count("error")  # stopped runs leave an error record
    assert len({json.loads(line)["request_id"] for line in lines}) == len(lines)  # each once


async def test_shadow_with_renamed_outputs_is_compared_by_position(
    make_client: AppClient, model_repo: Path, tmp_path: Path
) -> None:
    """A shadow whose outputs have other names but the same values agrees, and says what it compared."""
    renames = {"label": "predicted", "probabilities": "scores"}
    make_renamed_model(
        model_repo / "iris/1/model.onnx", model_repo / "iris/renamed/model.onnx", renames
    )
    config = base_config(model_repo, tmp_path / "data")["models"]
    config["iris"]["variants"]["renamed"] = {"path": "iris/renamed/model.onnx"}
    config["iris"]["routing"]["shadows"] = [{"variant": "renamed", "sample": 1.0}]
    client = await make_client(models=config)
    response = await client.post("/v2/models/iris/infer", json=iris_body(IRIS_ROWS))
    assert response.status_code == 200
    (record,) = await records(tmp_path / "data" / "shadow" / "iris.jsonl", 1)
    assert record["agree"] == "1"
    assert record["compared"] == "label=predicted,probabilities=scores"
    assert json.loads(record["shadow_output"])["predicted"] == IRIS_LABELS
    only_probabilities = {**iris_body(IRIS_ROWS), "outputs": [{"name": "probabilities"}]}
    await client.post("/v2/models/iris/infer", json=only_probabilities)
    second = (await records(tmp_path / "data" / "shadow" / "iris.jsonl", 2))[1]
    assert second["compared"] == "probabilities=scores" and second["agree"] == "1"
