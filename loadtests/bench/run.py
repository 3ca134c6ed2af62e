"""Benchmark the gateway against a floor measured in the same run, with wrk and an open-loop client.

    python loadtests/bench/run.py [--duration 4] [--rounds 3]   # everything, ~12 minutes
    python loadtests/bench/run.py --soak 600                    # the memory soak alone

The floor is `floor.py`: a minimal Starlette + uvicorn + orjson app serving the same model on the
same OIP v2 body, onnxruntime called inline. Every server runs on core 0 and its load on core 1
(taskset). In order:

1. closed loop (`rounds.py`), round after round: the `mlp` suite (the gateway's features) and the
   `heavy` suite (batching off and on), each case against the floor of the same round;
2. open loop (`load.py`): the heavy model's latency against offered load, batching off and on,
   then an overload at 4x its capacity with the health and metrics routes timed meanwhile;
3. memory (`memory.py`): RSS per worker serving the bundled models, 1 and 2 workers.

Writes docs/benchmarks.md and its plots (`report.py`); the measurements are also saved (pickle,
in the temporary folder), so `--render FILE` can write the report again, say after editing
report.md.in. `--soak SECONDS` instead measures one
worker's RSS over a long load and writes docs/benchmarks-soak.json and .png, which the next full
run reads into the report.
"""

import argparse
import pickle
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import report
from harness import HERE as HERE
from harness import ROOT as ROOT
from harness import SERVER_CORE as SERVER_CORE
from harness import Case as Case
from harness import Sample as Sample
from harness import cpu_seconds as cpu_seconds
from harness import free_port as free_port
from harness import machine as machine
from harness import measure as measure
from harness import pinned as pinned
from harness import redis_server
from harness import server as server
from harness import wait_ready as wait_ready
from harness import wrk as wrk
from load import (
    ADMISSION,
    CONNECTION_LIMIT,
    OVERLOAD,
    REQUEST_TIMEOUT_S,
    LoadResults,
    run_overload,
    run_rejecting,
    run_sweep,
)
from memory import Footprint, footprint, soak
from rounds import (
    HEAVY,
    HEAVY_BATCHING,
    HEAVY_ON,
    LIVE,
    MLP,
    MLP_BATCHED,
    MLP_BATCHING,
    Results,
    run_suite,
)

MEMORY_LOAD_S = 10.0


@dataclass
class Run:
    """Everything one full run measured."""

    results: Results
    load: LoadResults
    footprints: list[Footprint]
    seconds: float
    command: str  # as run, for the report
    args: argparse.Namespace
    commit: str  # the checkout measured


def measure_all(args: argparse.Namespace) -> Run:
    began = time.monotonic()
    results = Results()
    with tempfile.TemporaryDirectory() as temp, redis_server(Path(temp)) as redis_url:
        directory = Path(temp)
        for number in range(1, args.rounds + 1):
            for suite in (MLP, HEAVY):
                label = f"round {number} {suite.name}"
                run_suite(suite, results, directory, redis_url, args.duration, label)
        load = LoadResults(capacity=results.median(HEAVY_ON, 128, "rps"))
        run_sweep(load, directory, args.load_seconds)
        run_overload(load, directory, args.overload_seconds)
        run_rejecting(load, directory, args.duration)
        footprints = [footprint(directory, workers, redis_url, MEMORY_LOAD_S) for workers in (1, 2)]
    command = ("python loadtests/bench/run.py " + " ".join(sys.argv[1:])).strip()
    return Run(results, load, footprints, time.monotonic() - began, command, args, checkout())


def write_report(run: Run, out: Path) -> None:
    args = run.args
    report.plot_mlp(run.results, out / "benchmarks.png")
    report.plot_heavy(run.results, out / "benchmarks-heavy.png")
    report.plot_load(run.load, out / "benchmarks-load.png")
    soak_result = report.load_soak(out)
    text = (
        (HERE / "report.md.in")
        .read_text()
        .format(
            command=run.command,
            minutes=run.seconds / 60,
            machine=machine(),
            commit=getattr(run, "commit", checkout()),
            date=time.strftime("%Y-%m-%d"),
            rounds=args.rounds,
            duration=args.duration,
            load_seconds=args.load_seconds,
            overload_seconds=args.overload_seconds,
            targets=report.targets(run.results, run.load, run.footprints, soak_result),
            mlp_batching=inline_yaml(MLP_BATCHING),
            mlp_table=report.table(run.results, MLP),
            mlp_gain=report.batching_gain(run.results, MLP_BATCHED, LIVE, [32]).lstrip("- "),
            shadow=report.shadow_cost(run.results),
            monitoring=report.monitoring_cost(run.results),
            heavy_batching=inline_yaml(HEAVY_BATCHING),
            heavy_table=report.table(run.results, HEAVY),
            heavy_gain=report.batching_gain(run.results, HEAVY_ON, HEAVY.cases[1], [1, 32, 128]),
            connection_limit=CONNECTION_LIMIT,
            admission=inline_yaml(ADMISSION),
            timeout=REQUEST_TIMEOUT_S,
            capacity=run.load.capacity,
            sweep_table=report.sweep_table(run.load),
            overload_factor=OVERLOAD,
            overload=report.overload_text(run.load),
            memory_seconds=MEMORY_LOAD_S,
            memory_table=report.memory_table(run.footprints),
            soak=report.soak_summary(soak_result) + "." if soak_result else "Not run yet.",
        )
    )
    (out / "benchmarks.md").write_text(text)


def checkout() -> str:
    """The commit measured, and whether the tree had other changes to the gateway."""
    git = ["git", "-C", str(ROOT)]
    commit = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    changed = subprocess.run(
        [*git, "status", "--porcelain", "--", "gateway"], capture_output=True, text=True
    )
    dirty = " with uncommitted changes to gateway/" if changed.stdout.strip() else ""
    return f"commit {commit.stdout.strip() or 'unknown'}{dirty}"


def inline_yaml(fields: dict[str, int]) -> str:
    return ", ".join(f"{name}: {value}" for name, value in fields.items())


def run_soak(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as temp:
        result = soak(Path(temp), args.soak)
    report.save_soak(result, args.out)
    print(report.soak_summary(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=4, help="seconds per wrk measurement")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--load-seconds", type=float, default=4, help="per open-loop rate")
    parser.add_argument("--overload-seconds", type=float, default=10)
    parser.add_argument("--soak", type=float, default=0, help="seconds: the memory soak alone")
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    parser.add_argument(
        "--render", type=Path, help="write the report from a saved run instead of measuring"
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: apt-get install wrk")
    args.out.mkdir(parents=True, exist_ok=True)
    if args.soak:
        run_soak(args)
        return
    if args.render:
        run = pickle.loads(args.render.read_bytes())
    else:
        run = measure_all(args)
        saved = Path(tempfile.gettempdir()) / "gateway-benchmark-run.pickle"
        saved.write_bytes(pickle.dumps(run))
        print(f"results saved to {saved} (--render {saved} writes the report again)")
    print(report.table(run.results, MLP))
    print(report.table(run.results, HEAVY))
    write_report(run, args.out)


if __name__ == "__main__":
    main()
