"""The gateway's own metric recording: what prometheus-client would export, summed over workers."""

import os
import subprocess
import sys
import time
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

metrics = Metrics(CollectorRegistry(), sys.argv[1])
for line in sys.stdin:  # "requests inflight stale": record, then say so; stdin closed: exit
    requests, inflight, stale = map(int, line.split())
    for _ in range(requests):
        metrics.observe_request("iris", "blue", "live", 200, 0.001)
    metrics.observe_inference("iris", "blue", 0.0005, rows=3)
    metrics.shadow_record("iris", "green", "logged")
    metrics.inflight, metrics.routing_stale = inflight, bool(stale)
    print("recorded", flush=True)
"""


class Worker:
    """Another worker process that records what the test tells it to, and keeps running."""

    def __init__(self, directory: Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", WORKER, str(directory)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip

    def record(self, requests: int, inflight: int = 0, stale: bool = False) -> None:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(f"{requests} {inflight} {int(stale)}\n")
        self.process.stdin.flush()
        assert self.process.stdout.readline() == "recorded\n"

    def kill(self) -> None:
        self.process.kill()
        self.process.communicate()

    def stop(self) -> None:
        self.process.communicate()  # closes its stdin: it exits


KEY = (("code", "200"), ("model", "iris"), ("role", "live"), ("variant", "blue"))


def requests_total(registry: CollectorRegistry) -> float:
    return exported(registry, "gateway_requests")[("gateway_requests_total", KEY)]


def test_workers_sum_at_once_dead_ones_included(tmp_path: Path) -> None:
    """A scrape sees other workers' counts as soon as they are recorded, no snapshot period; a
    killed worker's counts stay in the sum, its in-flight requests and staleness do not."""
    running, killed = Worker(tmp_path), Worker(tmp_path)
    try:
        registry = CollectorRegistry()
        metrics = Metrics(registry, str(tmp_path))
        metrics.observe_request("iris", "blue", "live", 200, 0.001)
        metrics.inflight = 1
        running.record(5, inflight=2)
        killed.record(7, inflight=3, stale=True)
        assert requests_total(registry) == 13
        assert exported(registry, "gateway_routing_stale") == {("gateway_routing_stale", ()): 1}
        killed.kill()
        running.record(4, inflight=2)
        assert requests_total(registry) == 17
        durations = exported(registry, "gateway_request_duration_seconds")
        assert durations[("gateway_request_duration_seconds_count", KEY[1:])] == 17
        assert sum(exported(registry, "gateway_shadow_records").values()) == 3
        assert exported(registry, "gateway_inflight_requests") == {
            ("gateway_inflight_requests", ()): 1 + 2
        }
        assert exported(registry, "gateway_routing_stale") == {("gateway_routing_stale", ()): 0}
    finally:
        running.stop()


def test_routing_stale_is_this_worker_or_any_running_one(tmp_path: Path) -> None:
    """gateway_routing_stale: 0 by default, 1 while this worker or another running one is stale."""
    registry = CollectorRegistry()
    metrics = Metrics(registry, str(tmp_path))
    stale = ("gateway_routing_stale", ())
    assert not metrics.routing_stale and exported(registry, "gateway_routing_stale") == {stale: 0}
    metrics.routing_stale = True
    assert exported(registry, "gateway_routing_stale") == {stale: 1}
    metrics.routing_stale = False
    other = Worker(tmp_path)
    try:
        other.record(0, stale=True)
        assert exported(registry, "gateway_routing_stale") == {stale: 1}
        other.record(0, stale=False)
        assert exported(registry, "gateway_routing_stale") == {stale: 0}
    finally:
        other.stop()


def test_variant_stats_sum_answers_and_runs_over_workers(tmp_path: Path) -> None:
    """Triton's statistics read: 200 answers apart from others, model runs, rows, last run."""
    metrics = Metrics(CollectorRegistry(), str(tmp_path))
    metrics.observe_request("iris", "blue", "live", 200, 0.25)
    metrics.observe_request("iris", "blue", "canary", 200, 0.5)
    metrics.observe_request("iris", "blue", "live", 400, 0.125)
    metrics.observe_inference("iris", "blue", 0.0625, rows=2)
    other = Worker(tmp_path)
    try:
        other.record(3)  # 3 answers of 1 ms, one run of 0.5 ms and 3 rows
    finally:
        other.stop()
    stats = metrics.variant_stats()[("iris", "blue")]
    assert (stats.success, stats.fail, stats.runs, stats.rows) == (5, 1, 2, 5)
    assert stats.success_seconds == pytest.approx(0.753)
    assert stats.fail_seconds == pytest.approx(0.125)
    assert stats.run_seconds == pytest.approx(0.063)
    assert stats.last_run == pytest.approx(time.time(), abs=60)
    assert ("iris", "green") not in metrics.variant_stats()  # nothing answered: no entry


def test_one_process_writes_no_files_and_a_reused_pid_gets_its_own_directory(
    tmp_path: Path,
) -> None:
    """Without a directory the values are anonymous memory; with one, each Metrics (as each
    worker, even one whose pid a dead worker had) gets its own `<pid>[.n]` directory."""
    alone = Metrics(CollectorRegistry())
    alone.observe_inference("mlp", "v1", 0.01)
    first = Metrics(CollectorRegistry(), str(tmp_path))
    first.observe_inference("mlp", "v1", 0.01)
    second = Metrics(CollectorRegistry(), str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == [str(os.getpid()), f"{os.getpid()}.1"]
    assert sorted(p.name for p in (tmp_path / str(os.getpid())).iterdir()) == ["index", "values.0"]
    name = "gateway_inference_duration_seconds"
    assert exported(second.registry, name) == exported(first.registry, name)


def test_a_broken_index_line_loses_that_series_only(tmp_path: Path) -> None:
    """An index line cut short (a full disk) hides that one series; the worker's others count."""
    other = Worker(tmp_path)
    try:
        other.record(2)
        [directory] = [p for p in tmp_path.iterdir() if p.name == str(other.process.pid)]
        with (directory / "index").open("ab") as index:
            index.write(b'["gateway_requests", ["iris"\n')
        registry = CollectorRegistry()
        Metrics(registry, str(tmp_path))
        assert requests_total(registry) == 2
    finally:
        other.stop()
