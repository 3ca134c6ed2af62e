"""The open-loop part of the benchmark (`openloop.py` on core 1): the heavy model's latency against
offered load, batching off and on, and an overload at four times its capacity with batching on,
while a prober times the health and metrics routes.

Both gateways get the same admission settings (ADMISSION): a bounded queue and a deadline, so
past its capacity a gateway answers 429 or 504 rather than letting the queue grow.
"""

import json
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import CLIENT_CORE, HERE, MODELS, Case, Scrape, measure, pinned, scrape, server
from rounds import HEAVY_BATCHING

# The deadline is 100 runs of the heavy model alone; the queue holds what the gateway serves in
# about two thirds of it at its capacity (~2,000 requests/s on one core), so a request admitted
# to a full queue can still be answered in time.
REQUEST_TIMEOUT_S = 0.1
ADMISSION = {"max_queue_size": 128}
LOAD_OFF = Case(
    "heavy: batching off, admission",
    {"live": "v1"},
    model="heavy",
    variant=ADMISSION,
    request_timeout_s=REQUEST_TIMEOUT_S,
)
LOAD_ON = Case(
    "heavy: batching on, admission",
    {"live": "v1"},
    model="heavy",
    variant={**HEAVY_BATCHING, **ADMISSION},
    request_timeout_s=REQUEST_TIMEOUT_S,
)
# Offered rates of the sweep, as fractions of the capacity with batching on (closed loop, c=128).
SWEEP = (0.1, 0.2, 0.35, 0.5, 0.7, 0.85, 1.0, 1.25, 1.5)
OVERLOAD = 4.0
CONNECTIONS, CONNECTION_LIMIT = 256, 2048  # opened up front; at most
REJECTED_WITHIN_S = 0.010  # issue 12: every rejected request answered within 10 ms
PROBE_WITHIN_S = 0.050  # and health and metrics within 50 ms
PROBE_INTERVAL_S = 0.05


@dataclass
class Offered:
    """One open-loop measurement: latencies (s, from when each request was due) by status."""

    rate: float
    seconds: float
    latencies: dict[int, list[float]]
    lag_p99_s: float  # how late the client sent, 99th percentile
    client_busy: float
    connections: int
    probes: dict[str, dict[str, list[float]]] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(len(values) for values in self.latencies.values())

    def count(self, *statuses: int) -> int:
        return sum(len(self.latencies.get(status, [])) for status in statuses)

    def share(self, *statuses: int) -> float:
        return self.count(*statuses) / max(self.total, 1)

    @property
    def goodput(self) -> float:
        return self.count(200) / self.seconds

    def percentile(self, q: float, *statuses: int) -> float:
        values = sorted(v for s in statuses for v in self.latencies.get(s, []))
        return percentile(values, q)

    def other_errors(self) -> int:
        """Answers that are neither 200 nor an admission answer (429, 504), and no answers."""
        return self.total - self.count(200, 429, 504)

    def statuses(self) -> dict[int, int]:
        return {status: len(values) for status, values in sorted(self.latencies.items())}


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (nearest rank) of sorted `values`; NaN when empty."""
    if not values:
        return float("nan")
    return values[min(len(values) - 1, max(0, round(q / 100 * len(values)) - 1))]


def offer(url: str, rate: float, seconds: float, probe: bool = False) -> Offered:
    """Run openloop.py (and its prober) on core 1 against the heavy model at `rate`."""
    model = MODELS["heavy"]
    command = [
        *(sys.executable, str(HERE / "openloop.py"), "offer", url + model.infer_path("heavy")),
        *("--rate", str(rate), "--seconds", str(seconds), "--features", str(model.features)),
        *("--connections", str(CONNECTIONS), "--limit", str(CONNECTION_LIMIT)),
    ]
    prober = None
    if probe:
        probe_command = [sys.executable, str(HERE / "openloop.py"), "probe", url]
        probe_command += ["--seconds", str(seconds), "--interval", str(PROBE_INTERVAL_S)]
        prober = subprocess.Popen(pinned(CLIENT_CORE, probe_command), stdout=subprocess.PIPE)
    output = subprocess.run(pinned(CLIENT_CORE, command), capture_output=True, check=True)
    result = offered(json.loads(output.stdout))
    if prober is not None:
        result.probes = json.loads(prober.communicate(timeout=60)[0])
    return result


def offered(raw: dict[str, Any]) -> Offered:
    latencies: dict[int, list[float]] = {}
    for due, done, status in zip(raw["due"], raw["done"], raw["status"], strict=True):
        latencies.setdefault(status, []).append(done - due if done else float("inf"))
    lags = sorted(sent - due for due, sent in zip(raw["due"], raw["sent"], strict=True) if sent)
    return Offered(
        rate=raw["rate"],
        seconds=raw["seconds"],
        latencies={status: sorted(values) for status, values in latencies.items()},
        lag_p99_s=percentile(lags, 99),
        client_busy=raw["client_busy"],
        connections=raw["connections_opened"],
    )


# Every request but one at a time finds the queue full: how fast can the gateway say 429?
REJECTING = Case(
    "heavy: a queue of one",
    {"live": "v1"},
    model="heavy",
    variant={**HEAVY_BATCHING, "max_queue_size": 1},
    request_timeout_s=REQUEST_TIMEOUT_S,
)
REJECTING_CONNECTIONS = 64


@dataclass
class LoadResults:
    capacity: float  # requests/s of the heavy model, batching on, closed loop at c=128
    sweep: dict[str, list[Offered]] = field(default_factory=dict)
    overload: Offered | None = None
    overload_rejections: Counter[str] = field(default_factory=Counter)
    # The queue of one: answers/s, their share of 429s, server CPU µs per answer.
    rejecting: tuple[float, float, float] | None = None


def warm(url: str, pid: int) -> None:
    """A short closed-loop run: sessions, caches and the batcher's cost estimates warm."""
    measure(url, pid, 32, 1, model="heavy")


def run_sweep(results: LoadResults, directory: Path, seconds: float) -> None:
    """Latency against offered load: each rate of SWEEP, batching off then on."""
    for case in (LOAD_OFF, LOAD_ON):
        with server(case, directory, None) as (url, pid):
            warm(url, pid)
            for fraction in SWEEP:
                measured = offer(url, fraction * results.capacity, seconds)
                results.sweep.setdefault(case.name, []).append(measured)
                print(f"sweep {case.name:32s} {describe(measured)}", flush=True)


def run_overload(results: LoadResults, directory: Path, seconds: float) -> None:
    """OVERLOAD times the capacity, batching on, with the prober running meanwhile."""
    with server(LOAD_ON, directory, None) as (url, pid):
        warm(url, pid)
        before = scrape(url)
        results.overload = offer(url, OVERLOAD * results.capacity, seconds, probe=True)
        after = scrape(url)
        results.overload_rejections = rejections(before, after)
        print(f"overload {LOAD_ON.name:29s} {describe(results.overload)}", flush=True)
        for name, values in results.overload.probes.items():
            print(f"overload probe {name}: max {max(values['latency_s']) * 1e3:.1f} ms")


def rejections(before: Scrape, after: Scrape) -> Counter[str]:
    """gateway_rejected_requests_total between two scrapes, by reason."""
    counted: Counter[str] = Counter()
    for (name, labels), value in after.items():
        if name == "gateway_rejected_requests_total":
            counted[dict(labels)["reason"]] += int(value - before.get((name, labels), 0.0))
    return counted


def run_rejecting(results: LoadResults, directory: Path, seconds: int) -> None:
    """wrk at c=64 against a queue of one: nearly every answer is a 429."""
    with server(REJECTING, directory, None) as (url, pid):
        before = scrape(url)
        sample = measure(url, pid, REJECTING_CONNECTIONS, seconds, model="heavy")
        after = scrape(url)
    codes = {
        dict(labels)["code"]: value - before.get((name, labels), 0.0)
        for (name, labels), value in after.items()
        if name == "gateway_requests_total"
    }
    share = codes.get("429", 0.0) / max(sum(codes.values()), 1.0)
    results.rejecting = (sample.rps, share, sample.cpu_us)
    print(f"rejecting {sample.rps:.0f} answers/s, {share:.1%} 429, {sample.cpu_us:.0f} us/answer")


def describe(measured: Offered) -> str:
    p50, p99 = measured.percentile(50, 200) * 1e3, measured.percentile(99, 200) * 1e3
    return (
        f"offered {measured.rate:7.0f}/s  goodput {measured.goodput:6.0f}/s  "
        f"200 p50 {p50:7.1f} ms p99 {p99:7.1f} ms  statuses {measured.statuses()}  "
        f"client lag p99 {measured.lag_p99_s * 1e3:.1f} ms  busy {measured.client_busy:.2f}  "
        f"connections {measured.connections}"
    )


def probe_summary(measured: Offered) -> dict[str, tuple[float, float, int]]:
    """Per probed route: p99 and max latency (s), and how many probes did not answer 200."""
    summary = {}
    for route, values in measured.probes.items():
        latencies = sorted(values["latency_s"])
        failures = sum(1 for status in values["status"] if status != 200)
        summary[route] = (percentile(latencies, 99), latencies[-1], failures)
    return summary
