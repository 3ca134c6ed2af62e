"""Benchmark the gateway against a floor measured in the same run, with wrk.

    python loadtests/bench/run.py [--duration 8] [--rounds 3] [--concurrency 1 32]

The floor is `floor.py`: a minimal Starlette + uvicorn + orjson app serving the same `mlp` model
(64-256-256-10) on the same OIP v2 body, onnxruntime called inline. Every case runs on core 0
and wrk on core 1 (taskset), one after another, round after round, so machine noise hits all
cases alike; each figure is the median over rounds of that case's ratio to the floor measured in
the same round. Writes docs/benchmarks.md (table, command, machine) and docs/benchmarks.png.
"""

import argparse
import contextlib
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import redis
import yaml
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
SERVER_CORE, CLIENT_CORE = "0", "1"
RESULT = re.compile(
    r"RESULT requests=(\d+) errors=(\d+) duration_us=(\d+) p50_us=(\d+) p99_us=(\d+)"
)


@dataclass(frozen=True)
class Case:
    """One server set-up: the floor, or the gateway with some routing."""

    name: str
    routing: dict[str, Any] | None = None  # None: the floor app
    workers: int = 1
    monitoring: bool = True  # the gateway's model monitoring (README "Monitoring")


CASES = [
    Case("floor"),
    Case("gateway: live only", {"live": "v1"}),
    Case("gateway: live only, monitoring off", {"live": "v1"}, monitoring=False),
    Case("gateway: live + 5% canary", {"live": "v1", "canary": {"variant": "v2", "weight": 0.05}}),
    Case(
        "gateway: live + 100% shadow", {"live": "v1", "shadows": [{"variant": "v2", "sample": 1.0}]}
    ),
    Case("gateway: 2 workers (Redis)", {"live": "v1"}, workers=2),
]
LIVE, UNMONITORED, SHADOW = CASES[1], CASES[2], CASES[4]


@dataclass
class Sample:
    rps: float
    p50_ms: float
    p99_ms: float
    cpu_us: float  # server CPU time (user + system, all processes) per request
    errors: int


# The shadow's cost is also measured at a partial load: connections, and a pause (ms) after each
# answer. Here that keeps the server's core about a third busy with live traffic.
PACED = (4, 1)


@dataclass
class Results:
    samples: dict[tuple[str, int | str], list[Sample]] = field(default_factory=dict)
    # Shadow records counted during each measurement of the shadow case, by outcome.
    shadows: dict[int | str, list[dict[str, float]]] = field(default_factory=dict)

    def add(self, case: str, concurrency: int | str, sample: Sample) -> None:
        self.samples.setdefault((case, concurrency), []).append(sample)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pinned(core: str, command: list[str]) -> list[str]:
    return ["taskset", "-c", core, *command] if shutil.which("taskset") else command


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of `pid` and all its descendants, from /proc."""
    total, ticks = 0.0, os.sysconf("SC_CLK_TCK")
    for child in [pid, *descendants(pid)]:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / ticks
    return total


def descendants(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found += [int(entry.name), *descendants(int(entry.name))]
    return found


def gateway_config(directory: Path, case: Case, redis_url: str | None) -> Path:
    """A config for `case` with its own data directory: a gateway adopts the routing it finds
    stored, so a directory (or Redis) shared with an earlier case would replay that case's
    routing instead of this one's."""
    mlp = str(ROOT / "models" / "mlp" / "1" / "model.onnx")
    directory = Path(tempfile.mkdtemp(dir=directory))
    config = {
        "model_repository": "/",
        "data_dir": str(directory / "data"),
        "redis_url": redis_url if case.workers > 1 else None,
        # v2 is the same file under another name: the cost of routing, not of another model.
        "models": {
            "mlp": {
                "variants": {"v1": {"path": mlp}, "v2": {"path": mlp}},
                "routing": case.routing,
                "monitoring": {"enabled": case.monitoring},
            }
        },
    }
    path = directory / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@contextlib.contextmanager
def server(case: Case, directory: Path, redis_url: str | None) -> Iterator[tuple[str, int]]:
    port = free_port()
    if case.routing is None:
        command = [sys.executable, str(HERE / "floor.py"), "--port", str(port)]
        ready = f"http://127.0.0.1:{port}/v2/models/mlp/infer"
    else:
        if case.workers > 1 and redis_url is not None:
            redis.Redis.from_url(redis_url).flushdb()  # our own Redis server, not a shared one
        config = gateway_config(directory, case, redis_url)
        command = [
            sys.executable,
            "-m",
            "gateway",
            "serve",
            "--config",
            str(config),
            "--port",
            str(port),
            "--workers",
            str(case.workers),
            "--log-level",
            "warning",
        ]
        ready = f"http://127.0.0.1:{port}/v2/health/ready"
    process = subprocess.Popen(pinned(SERVER_CORE, command), start_new_session=True)
    try:
        wait_ready(ready, process)
        yield f"http://127.0.0.1:{port}", process.pid
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)


def wait_ready(url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    body = (HERE / "body.json").read_bytes()
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"server exited with {process.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            if url.endswith("/infer"):
                if httpx.post(url, content=body).status_code == 200:
                    return
            elif httpx.get(url).status_code == 200:
                return
        time.sleep(0.1)
    raise SystemExit(f"server at {url} not ready in 60 s")


def wrk(
    url: str, concurrency: int, seconds: int, delay_ms: int = 0
) -> tuple[int, int, float, float, float]:
    command = pinned(
        CLIENT_CORE,
        [
            "wrk",
            "-t1",
            f"-c{concurrency}",
            f"-d{int(seconds)}s",
            "-s",
            str(HERE / "infer.lua"),
            url,
        ],
    )
    env = {**os.environ, "BENCH_DELAY_MS": str(delay_ms)} if delay_ms else None
    output = subprocess.run(command, capture_output=True, text=True, check=True, env=env).stdout
    match = RESULT.search(output)
    if match is None:
        raise SystemExit(f"wrk printed no result:\n{output}")
    requests, errors, duration_us, p50_us, p99_us = map(int, match.groups())
    return requests, errors, duration_us / 1e6, p50_us / 1000, p99_us / 1000


def measure(url: str, pid: int, concurrency: int, seconds: int, delay_ms: int = 0) -> Sample:
    # Warm up connections, caches and the inline-cost estimate, at the same load: a warm-up at
    # full speed would leave the partial-load run a shadow queue filled to its end.
    wrk(url, concurrency, 1, delay_ms)
    before = cpu_seconds(pid)
    requests, errors, duration, p50, p99 = wrk(url, concurrency, seconds, delay_ms)
    cpu = cpu_seconds(pid) - before
    return Sample(requests / duration, p50, p99, cpu / max(requests, 1) * 1e6, errors)


@contextlib.contextmanager
def redis_server(directory: Path) -> Iterator[str]:
    port = free_port()
    process = subprocess.Popen(
        pinned(
            SERVER_CORE,
            [
                "redis-server",
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(directory),
            ],
        ),
        stdout=subprocess.DEVNULL,
    )
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.kill()
        process.wait()


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(httpx.get(f"{url}/metrics").text)
        for sample in family.samples
    }


def shadow_records(url: str) -> dict[str, float]:
    """Shadow records by outcome, as /metrics counts them (records land in batches: wait for
    the count to stop moving)."""
    counts: dict[str, float] = {}
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        previous, counts = (
            counts,
            {
                dict(labels)["outcome"]: value
                for (name, labels), value in scrape(url).items()
                if name == "gateway_shadow_records_total"
            },
        )
        if counts == previous:
            break
        time.sleep(0.3)
    return counts


def served(url: str, case: Case) -> str:
    """What the gateway's /metrics says it served; stops the run if it is not `case`'s routing."""
    samples = scrape(url)
    requests = {
        dict(labels)["role"]: value
        for (name, labels), value in samples.items()
        if name == "gateway_requests_total"
    }
    shadows = shadow_records(url)
    assert case.routing is not None
    weight = case.routing.get("canary", {}).get("weight", 0.0)
    served_weight = samples[("gateway_canary_weight", (("model", "mlp"), ("variant", "v2")))]
    if served_weight != weight or bool(shadows) != bool(case.routing.get("shadows")):
        raise SystemExit(f"{case.name}: the gateway did not serve the case's routing: {samples}")
    return f"requests by role {requests}  shadow records {shadows}"


def run(args: argparse.Namespace) -> Results:
    results = Results()
    with tempfile.TemporaryDirectory() as temp, redis_server(Path(temp)) as redis_url:
        for round_number in range(1, args.rounds + 1):
            for case in CASES:
                with server(case, Path(temp), redis_url) as (url, pid):
                    loads: list[tuple[int | str, int, int]] = [
                        (concurrency, concurrency, 0) for concurrency in args.concurrency
                    ]
                    if case in (LIVE, SHADOW):  # first: saturated runs leave a full shadow queue
                        loads.insert(0, ("paced", *PACED))
                    for key, connections, delay_ms in loads:
                        before = shadow_records(url) if case is SHADOW else {}
                        sample = measure(url, pid, connections, args.duration, delay_ms)
                        results.add(case.name, key, sample)
                        if case is SHADOW:
                            after = shadow_records(url)
                            results.shadows.setdefault(key, []).append(
                                {k: v - before.get(k, 0.0) for k, v in after.items()}
                            )
                        print(
                            f"round {round_number} {case.name:32s} c={key!s:<6s} "
                            f"{sample.rps:8.0f} req/s  p50 {sample.p50_ms:6.3f} ms  "
                            f"p99 {sample.p99_ms:6.3f} ms  cpu {sample.cpu_us:6.0f} us/req  "
                            f"errors {sample.errors}",
                            flush=True,
                        )
                    if case.routing is not None:
                        print(f"round {round_number} {case.name:32s} {served(url, case)}")
    return results


def ratios(results: Results, case: str, concurrency: int) -> dict[str, float]:
    """Median over rounds of (case / floor of the same round) for each figure."""
    pairs = list(
        zip(
            results.samples[(case, concurrency)],
            results.samples[("floor", concurrency)],
            strict=True,
        )
    )

    def median(figure: str) -> float:
        return statistics.median(getattr(c, figure) / getattr(f, figure) for c, f in pairs)

    return {figure: median(figure) for figure in ("rps", "p50_ms", "p99_ms", "cpu_us")}


def shadow_cost(results: Results, concurrencies: list[int]) -> str:
    """The 100% shadow case against live only (medians of the per-round ratios), and the share
    of shadow runs that were logged rather than dropped (all rounds together)."""
    lines = []
    for key in [*concurrencies, "paced"]:
        pairs = paired(results, SHADOW, LIVE, key)

        def median(figure: str, pairs: list[tuple[Sample, Sample]] = pairs) -> float:
            return statistics.median(getattr(m, figure) / getattr(a, figure) for m, a in pairs)

        counts = results.shadows[key]
        logged = sum(c.get("logged", 0.0) for c in counts)
        dropped = sum(c.get("dropped", 0.0) for c in counts)
        load = (
            f"c={key}"
            if key != "paced"
            else f"partial load ({PACED[0]} connections, {PACED[1]} ms pause after each answer, "
            f"live only {statistics.median(a.rps for _, a in pairs):.0f} req/s)"
        )
        lines.append(
            f"- {load}: caller p50 {median('p50_ms'):.2f} times live only's, p99 "
            f"{median('p99_ms'):.2f} times, throughput {median('rps'):.2f} times; shadow runs "
            f"logged {logged / max(logged + dropped, 1):.0%} ({logged:.0f} logged, "
            f"{dropped:.0f} dropped)"
        )
    return "\n".join(lines)


def paired(results: Results, case: Case, base: Case, key: int | str) -> list[tuple[Sample, Sample]]:
    """(case, base) samples of the same rounds."""
    return list(
        zip(results.samples[(case.name, key)], results.samples[(base.name, key)], strict=True)
    )


def monitoring_cost(results: Results, concurrencies: list[int]) -> str:
    """Live only with monitoring on against off (medians of the per-round ratios)."""
    lines = []
    for key in concurrencies:
        pairs = paired(results, LIVE, UNMONITORED, key)
        ratio = {
            figure: statistics.median(
                getattr(on, figure) / getattr(off, figure) for on, off in pairs
            )
            for figure in ("rps", "p50_ms", "p99_ms", "cpu_us")
        }
        lines.append(
            f"- c={key}: throughput {ratio['rps']:.3f} times monitoring off's, p50 "
            f"{ratio['p50_ms']:.3f} times, p99 {ratio['p99_ms']:.3f} times, CPU per request "
            f"{ratio['cpu_us']:.3f} times"
        )
    return "\n".join(lines)


def table(results: Results, concurrencies: list[int]) -> str:
    lines = [
        "| case | c | req/s | p50 ms | p99 ms | CPU µs/req | req/s ÷ floor | p50 ÷ floor "
        "| p99 ÷ floor | CPU ÷ floor | errors |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for concurrency in concurrencies:
        for case in CASES:
            runs = results.samples[(case.name, concurrency)]
            med = {
                f: statistics.median(getattr(s, f) for s in runs)
                for f in ("rps", "p50_ms", "p99_ms", "cpu_us")
            }
            r = ratios(results, case.name, concurrency)
            errors = sum(s.errors for s in runs)
            lines.append(
                f"| {case.name} | {concurrency} | {med['rps']:.0f} | {med['p50_ms']:.3f} | "
                f"{med['p99_ms']:.3f} | {med['cpu_us']:.0f} | {r['rps']:.2f} | {r['p50_ms']:.2f} | "
                f"{r['p99_ms']:.2f} | {r['cpu_us']:.2f} | {errors} |"
            )
    return "\n".join(lines)


def plot(results: Results, concurrencies: list[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    names = [case.name for case in CASES]
    width = 0.8 / len(concurrencies)
    for i, concurrency in enumerate(concurrencies):
        x = [n + i * width for n in range(len(names))]
        rps = [ratios(results, name, concurrency)["rps"] for name in names]
        p50 = [ratios(results, name, concurrency)["p50_ms"] for name in names]
        axes[0].bar(x, rps, width, label=f"c={concurrency}")
        axes[1].bar(x, p50, width, label=f"c={concurrency}")
    for axis, title in zip(
        axes,
        ["throughput ÷ floor (higher is better)", "p50 latency ÷ floor (lower is better)"],
        strict=True,
    ):
        axis.axhline(1.0, color="black", linewidth=0.8)
        axis.set_xticks([n + 0.4 - width / 2 for n in range(len(names))])
        axis.set_xticklabels([n.replace("gateway: ", "") for n in names], rotation=20, ha="right")
        axis.set_title(title)
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def machine() -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    python = platform.python_version()
    return f"{cpu}, {os.cpu_count()} cores, Linux {platform.release()}, Python {python}"


def write_report(results: Results, args: argparse.Namespace, path: Path) -> None:
    command = "python loadtests/bench/run.py " + " ".join(sys.argv[1:])
    text = (
        (HERE / "report.md.in")
        .read_text()
        .format(
            command=command.strip(),
            machine=machine(),
            date=time.strftime("%Y-%m-%d"),
            rounds=args.rounds,
            duration=args.duration,
            table=table(results, args.concurrency),
            shadow=shadow_cost(results, args.concurrency),
            monitoring=monitoring_cost(results, args.concurrency),
        )
    )
    path.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=8, help="seconds per measurement")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: apt-get install wrk")
    results = run(args)
    print(table(results, args.concurrency))
    args.out.mkdir(parents=True, exist_ok=True)
    plot(results, args.concurrency, args.out / "benchmarks.png")
    write_report(results, args, args.out / "benchmarks.md")


if __name__ == "__main__":
    main()
