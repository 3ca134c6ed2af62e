"""The gateway's own metric recording: what prometheus-client would export, summed over workers."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gateway.metrics import BUCKETS, Metrics

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def exported(registry: CollectorRegistry, family: str) -> Samples:
    """Every sample of `family` in the text /metrics serves, `_created` left out."""
    text = generate_latest(registry).decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for metric in text_string_to_metric_families(text)
        if metric.name == family
        for sample in metric.samples
        if not sample.name.endswith("_created")
    }


durations = st.lists(
    st.one_of(
        st.sampled_from(BUCKETS),  # exactly on a bound: that bucket (`le` is inclusive)
        st.floats(0, 20, allow_nan=False),
    ),
    max_size=40,
)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(durations)
def test_histogram_exports_what_prometheus_client_would(values: list[float]) -> None:
    """Bucket counts, sum and count equal prometheus-client's own Histogram given the same values."""
    ours, reference = CollectorRegistry(), CollectorRegistry()
    metrics = Metrics(ours)
    histogram = Histogram(
        "gateway_inference_duration_seconds", "The model run alone.",
        ["model", "variant"], buckets=BUCKETS, registry=reference,
    )  # fmt: skip
    for value in values:
        metrics.observe_inference("mlp", "v1", value)
        histogram.labels("mlp", "v1").observe(value)
    name = "gateway_inference_duration_seconds"
    if not values:  # no series yet: prometheus-client exports an empty child only once labelled
        assert exported(ours, name) == {}
        return
    assert exported(ours, name) == pytest.approx(exported(reference, name))


def test_requests_are_counted_per_code_and_timed_per_role() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    for code in (200, 200, 400):
        metrics.observe_request("iris", "blue", "live", code, 0.002)
    metrics.observe_request("iris", "green", "canary", 200, 0.003)
    requests = exported(registry, "gateway_requests")
    assert requests == {
        ("gateway_requests_total", (("code", "200"), ("model", "iris"), ("role", "live"),
                                    ("variant", "blue"))): 2.0,
        ("gateway_requests_total", (("code", "400"), ("model", "iris"), ("role", "live"),
                                    ("variant", "blue"))): 1.0,
        ("gateway_requests_total", (("code", "200"), ("model", "iris"), ("role", "canary"),
                                    ("variant", "green"))): 1.0,
    }  # fmt: skip
    durations = exported(registry, "gateway_request_duration_seconds")
    live = (("model", "iris"), ("role", "live"), ("variant", "blue"))
    assert durations[("gateway_request_duration_seconds_count", live)] == 3
    assert durations[("gateway_request_duration_seconds_sum", live)] == pytest.approx(0.006)


WORKER = """
import sys
from prometheus_client import CollectorRegistry
from gateway.metrics import Metrics

directory, requests, inflight = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
metrics = Metrics(CollectorRegistry(), directory)
for _ in range(requests):
    metrics.observe_request("iris", "blue", "live", 200, 0.001)
metrics.shadow_record("iris", "green", "logged")
metrics.inflight = inflight
metrics.write_snapshot()
print("written", flush=True)
sys.stdin.read()  # run until the test closes our stdin
"""


def worker(directory: Path, requests: int, inflight: int) -> subprocess.Popen[str]:
    """Another worker process that has written its counts and keeps running."""
    process = subprocess.Popen(
        [sys.executable, "-c", WORKER, str(directory), str(requests), str(inflight)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert process.stdout is not None and process.stdout.readline() == "written\n"
    return process


def test_workers_sum_counters_and_live_inflight(tmp_path: Path) -> None:
    """With a shared directory, /metrics adds other workers' counts; a stopped worker's counts
    stay in the sum (counters never go down) but its in-flight requests do not."""
    running, stopped = worker(tmp_path, 5, 2), worker(tmp_path, 7, 3)
    try:
        stopped.kill()
        stopped.communicate()
        registry = CollectorRegistry()
        metrics = Metrics(registry, str(tmp_path))
        metrics.observe_request("iris", "blue", "live", 200, 0.001)
        metrics.inflight = 1
        key = (("code", "200"), ("model", "iris"), ("role", "live"), ("variant", "blue"))
        assert exported(registry, "gateway_requests")[("gateway_requests_total", key)] == 13
        durations = exported(registry, "gateway_request_duration_seconds")
        assert durations[("gateway_request_duration_seconds_count", key[1:])] == 13
        assert sum(exported(registry, "gateway_shadow_records").values()) == 2
        assert exported(registry, "gateway_inflight_requests") == {
            ("gateway_inflight_requests", ()): 1 + 2
        }
    finally:
        running.communicate()  # closes its stdin: it exits


def test_a_worker_writes_its_counts_only_when_shared(tmp_path: Path) -> None:
    alone = Metrics(CollectorRegistry())
    assert not alone.shared
    alone.write_snapshot()  # nowhere to write: nothing happens
    shared = Metrics(CollectorRegistry(), str(tmp_path))
    shared.observe_inference("mlp", "v1", 0.01)
    shared.write_snapshot()
    assert [p.name for p in tmp_path.iterdir()] == [f"{os.getpid()}.json"]
