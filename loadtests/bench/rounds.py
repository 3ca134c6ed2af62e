"""The closed-loop part of the benchmark: every case of a suite, one after another, round after
round, each measured with wrk at fixed concurrencies, so machine noise hits all cases alike.

Two suites: `mlp` (64-256-256-10, the cost of the gateway's features against the floor) and
`heavy` (512-2048-2048-512, batching off and on against the floor).
"""

import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

from harness import Case, Sample, Scrape, measure, metric_sum, scrape, server

# The shadow's cost is also measured at a partial load: connections, and a pause (ms) after each
# answer. Here that keeps the server's core about a third busy with live traffic.
PACED = (4, 1)
AGAIN = "1 again"  # c=1 measured again after the higher concurrencies, on the same server

# Dynamic batching (README "Batching and admission"; Triton's names and meaning). mlp's run
# is ~30 µs, so a short wait; heavy's batch of 64 rows runs in ~9 ms, 1.4x the cost per row of
# a batch of 32 and a seventh of 64 lone runs.
MLP_BATCHING = {"max_batch_size": 32, "max_queue_delay_us": 200}
HEAVY_BATCHING = {"max_batch_size": 64, "max_queue_delay_us": 1000}


@dataclass(frozen=True)
class Suite:
    name: str
    cases: list[Case]
    concurrencies: tuple[int, ...]

    @property
    def floor(self) -> Case:
        return self.cases[0]


LIVE = Case("gateway: live only", {"live": "v1"})
UNMONITORED = Case("gateway: live only, monitoring off", {"live": "v1"}, monitoring=False)
CANARY = Case(
    "gateway: live + 5% canary", {"live": "v1", "canary": {"variant": "v2", "weight": 0.05}}
)
SHADOW = Case(
    "gateway: live + 100% shadow", {"live": "v1", "shadows": [{"variant": "v2", "sample": 1.0}]}
)
MLP_BATCHED = Case(
    "gateway: live only, batching on", {"live": "v1"}, variant=MLP_BATCHING, concurrencies=(32,)
)
MLP = Suite(
    "mlp",
    [
        Case("floor"),
        LIVE,
        UNMONITORED,
        CANARY,
        SHADOW,
        Case("gateway: 2 workers (Redis)", {"live": "v1"}, workers=2),
        MLP_BATCHED,
    ],
    (1, 32),
)
HEAVY_OFF = Case("heavy: gateway, batching off", {"live": "v1"}, model="heavy")
HEAVY_ON = Case(
    "heavy: gateway, batching on", {"live": "v1"}, model="heavy", variant=HEAVY_BATCHING
)
HEAVY = Suite("heavy", [Case("heavy: floor", model="heavy"), HEAVY_OFF, HEAVY_ON], (1, 32, 128))
# c=1 again after c=32 ("whatever ran before", issue 12): the floor and the two routed cases.
MEASURED_AGAIN = ("floor", LIVE.name, CANARY.name)

Key = tuple[str, int | str]


@dataclass
class Results:
    samples: dict[Key, list[Sample]] = field(default_factory=dict)
    # Shadow records counted during each measurement of the shadow case, by outcome.
    shadows: dict[int | str, list[dict[str, float]]] = field(default_factory=dict)
    # Mean rows per model run during each measurement of a batching case, from /metrics.
    batch_rows: dict[Key, list[float]] = field(default_factory=dict)

    def add(self, case: str, concurrency: int | str, sample: Sample) -> None:
        self.samples.setdefault((case, concurrency), []).append(sample)

    def median(self, case: Case, key: int | str, figure: str) -> float:
        return float(statistics.median(getattr(s, figure) for s in self.samples[(case.name, key)]))


def loads(suite: Suite, case: Case) -> list[tuple[int | str, int, int]]:
    """(key, connections, pause ms) of each measurement of `case`, in order."""
    wanted = case.concurrencies or suite.concurrencies
    found: list[tuple[int | str, int, int]] = [(c, c, 0) for c in wanted]
    if case in (LIVE, SHADOW):  # first: saturated runs leave a full shadow queue
        found.insert(0, ("paced", *PACED))
    if case.name in MEASURED_AGAIN and 1 in wanted:
        found.append((AGAIN, 1, 0))
    return found


def run_suite(
    suite: Suite, results: Results, directory: Path, redis_url: str, seconds: int, label: str
) -> None:
    """One round of `suite`: each case on a fresh server, at each of its loads for `seconds`."""
    for case in suite.cases:
        with server(case, directory, redis_url) as (url, pid):
            for key, connections, delay_ms in loads(suite, case):
                before = scrape(url) if case.routing is not None else {}
                sample = measure(url, pid, connections, seconds, delay_ms, case.model)
                results.add(case.name, key, sample)
                if case.routing is not None:
                    after = settled(url, case)
                    record_side_figures(results, case, key, before, after)
                print(
                    f"{label} {case.name:34s} c={key!s:<7s} {sample.rps:8.0f} req/s  "
                    f"p50 {sample.p50_ms:7.3f} ms  p99 {sample.p99_ms:7.3f} ms  "
                    f"cpu {sample.cpu_us:6.0f} us/req  errors {sample.errors}",
                    flush=True,
                )
            if case.routing is not None:
                print(f"{label} {case.name:34s} {served(url, case)}", flush=True)


def settled(url: str, case: Case) -> Scrape:
    """/metrics once shadow records stop arriving (they land in batches)."""
    samples = scrape(url)
    deadline = time.monotonic() + 10
    while case is SHADOW and time.monotonic() < deadline:
        time.sleep(0.3)
        previous, samples = samples, scrape(url)
        if shadow_counts(samples) == shadow_counts(previous):
            break
    return samples


def shadow_counts(samples: Scrape) -> dict[str, float]:
    return {
        dict(labels)["outcome"]: value
        for (name, labels), value in samples.items()
        if name == "gateway_shadow_records_total"
    }


def record_side_figures(
    results: Results,
    case: Case,
    key: int | str,
    before: Scrape,
    after: Scrape,
) -> None:
    """Shadow records of the shadow case, mean batch rows of a batching case."""
    if case is SHADOW:
        old = shadow_counts(before)
        results.shadows.setdefault(key, []).append(
            {k: v - old.get(k, 0.0) for k, v in shadow_counts(after).items()}
        )
    if case.batching:
        rows = metric_sum(after, "gateway_batch_size_sum") - metric_sum(
            before, "gateway_batch_size_sum"
        )
        runs = metric_sum(after, "gateway_batch_size_count") - metric_sum(
            before, "gateway_batch_size_count"
        )
        results.batch_rows.setdefault((case.name, key), []).append(rows / max(runs, 1))


def served(url: str, case: Case) -> str:
    """What the gateway's /metrics says it served; stops the run if it is not `case`'s routing."""
    samples = settled(url, case)
    requests = {
        dict(labels)["role"]: value
        for (name, labels), value in samples.items()
        if name == "gateway_requests_total"
    }
    shadows = shadow_counts(samples)
    assert case.routing is not None
    weight = case.routing.get("canary", {}).get("weight", 0.0)
    served_weight = samples[("gateway_canary_weight", (("model", case.model), ("variant", "v2")))]
    if served_weight != weight or bool(shadows) != bool(case.routing.get("shadows")):
        raise SystemExit(f"{case.name}: the gateway did not serve the case's routing: {samples}")
    if case.batching and metric_sum(samples, "gateway_batch_size_count") == 0:
        raise SystemExit(f"{case.name}: the gateway ran no batch: {samples}")
    return f"requests by role {requests}  shadow records {shadows}"
