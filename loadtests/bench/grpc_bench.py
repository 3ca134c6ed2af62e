"""The gRPC data plane and tracing, measured in one run (issue 14; docs/benchmarks-grpc.md).

    flock /tmp/gateway-bench.lock timeout 1200 \
        python loadtests/bench/grpc_bench.py --rounds 3 --duration 4 [--baseline DIR]

Round after round, each server in turn on core 0 with its load on core 1, at 1 and 32 callers
(the `mlp` model, one row of 64 FP32 values, as the HTTP suite sends):

- gRPC (`grpc_load.py`, raw tensors on one channel): the floor (`grpc_floor.py`, a bare grpcio
  asyncio server running the model inline), the gateway with tracing off, and with tracing on,
  exporting to an OTLP receiver (`grpc_otlp_sink.py`, on core 1);
- HTTP (wrk, infer.lua): with `--baseline DIR` (a checkout of the commit before the tracing
  hooks) that gateway first, then this one with tracing off and on: tracing off against no
  tracing at all, and what tracing on costs.

The gateway runs its defaults (one worker, monitoring on, live only). Prints a Markdown table of
medians over rounds, each case with its ratio to the first case of its transport.
"""

import argparse
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import yaml
from grpc_load import METHOD, request_bytes
from harness import (
    CLIENT_CORE,
    HERE,
    RESULT,
    ROOT,
    SERVER_CORE,
    Case,
    Sample,
    cpu_seconds,
    free_port,
    gateway_command,
    gateway_config,
    machine,
    measure,
    pinned,
    wait_ready,
)

CONCURRENCIES = (1, 32)


@dataclass(frozen=True)
class Server:
    """A server set-up: the gRPC floor, or a gateway (from `tree`: this checkout or another)."""

    name: str
    transport: str  # "grpc" or "http": how the load reaches it
    floor: bool = False
    tracing: bool = False
    tree: Path = ROOT
    sampler: str = ""  # OTEL_TRACES_SAMPLER_ARG of parentbased_traceidratio; "": every trace


def grpc_load(
    target: str, concurrency: int, seconds: float
) -> tuple[int, int, float, float, float]:
    """grpc_load.py on core 1: requests, errors, seconds, p50 and p99 in ms."""
    command = [sys.executable, str(HERE / "grpc_load.py"), target]
    command += ["--concurrency", str(concurrency), "--seconds", str(seconds)]
    output = subprocess.run(
        pinned(CLIENT_CORE, command), capture_output=True, text=True, check=True, cwd=HERE
    ).stdout
    match = RESULT.search(output)
    if match is None:
        raise SystemExit(f"grpc_load.py printed no result:\n{output}")
    requests, errors, duration_us, p50_us, p99_us = map(int, match.groups())
    return requests, errors, duration_us / 1e6, p50_us / 1000, p99_us / 1000


def measure_grpc(target: str, pid: int, concurrency: int, seconds: float) -> Sample:
    """One measurement after a 1 s warm-up at the same load, with the server's CPU time."""
    grpc_load(target, concurrency, 1)
    before = cpu_seconds(pid)
    requests, errors, duration, p50, p99 = grpc_load(target, concurrency, seconds)
    cpu = cpu_seconds(pid) - before
    return Sample(requests / duration, p50, p99, cpu / max(requests, 1) * 1e6, errors)


@contextlib.contextmanager
def process(
    command: list[str], cwd: Path, core: str, sampler: str = ""
) -> Iterator[subprocess.Popen[bytes]]:
    """`command` pinned to `core` in its own session, stopped (SIGINT, then SIGKILL) after."""
    env = {**os.environ, "PYTHONPATH": str(cwd)}  # `-m gateway` from that tree
    if sampler:
        env |= {
            "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
            "OTEL_TRACES_SAMPLER_ARG": sampler,
        }
    child = subprocess.Popen(pinned(core, command), cwd=cwd, env=env, start_new_session=True)
    try:
        yield child
    finally:
        os.killpg(child.pid, signal.SIGINT)
        try:
            child.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()


def wait_grpc(target: str, child: subprocess.Popen[bytes]) -> None:
    """Until a ModelInfer of the load's request is answered."""
    deadline = time.monotonic() + 60
    with grpc.insecure_channel(target) as channel:
        call = channel.unary_unary(METHOD)
        while time.monotonic() < deadline:
            if child.poll() is not None:
                raise SystemExit(f"{target}: server exited with {child.returncode}")
            with contextlib.suppress(grpc.RpcError):
                call(request_bytes("mlp", 64), timeout=1)
                return
            time.sleep(0.1)
    raise SystemExit(f"{target}: not answering in 60 s")


@contextlib.contextmanager
def started(server: Server, directory: Path, otlp: str) -> Iterator[tuple[str, int]]:
    """The server on core 0, ready; yields (its address for the load, pid)."""
    grpc_port = free_port()
    if server.floor:
        command = [sys.executable, str(HERE / "grpc_floor.py"), "--port", str(grpc_port)]
        with process(command, ROOT, SERVER_CORE) as child:
            wait_grpc(f"127.0.0.1:{grpc_port}", child)
            yield f"127.0.0.1:{grpc_port}", child.pid
        return
    http_port = free_port()
    config = gateway_config(directory, Case("live only", routing={"live": "v1"}), None)
    settings = yaml.safe_load(config.read_text())
    if server.transport == "grpc":  # HTTP cases run without a gRPC server beside them
        settings["grpc_port"] = grpc_port
    if server.tracing:
        settings["otel_endpoint"] = otlp
    config.write_text(yaml.safe_dump(settings))
    command = gateway_command(config, http_port)
    with process(command, server.tree, SERVER_CORE, server.sampler) as child:
        wait_ready(f"http://127.0.0.1:{http_port}/v2/health/ready", child)
        if server.transport == "grpc":
            wait_grpc(f"127.0.0.1:{grpc_port}", child)
            yield f"127.0.0.1:{grpc_port}", child.pid
        else:
            yield f"http://127.0.0.1:{http_port}", child.pid


def one_round(servers: list[Server], seconds: int, directory: Path, otlp: str) -> dict[str, Sample]:
    samples = {}
    for server in servers:
        with started(server, directory, otlp) as (address, pid):
            for concurrency in CONCURRENCIES:
                if server.transport == "grpc":
                    sample = measure_grpc(address, pid, concurrency, seconds)
                else:
                    sample = measure(address, pid, concurrency, seconds)
                samples[f"{server.transport} {server.name} c={concurrency}"] = sample
                print(f"  {server.transport} {server.name} c={concurrency}: {sample}", flush=True)
    return samples


def table(servers: list[Server], rounds: list[dict[str, Sample]]) -> str:
    """Medians over rounds; ratios to the first server of the same transport, same round."""
    lines = [
        "| transport | server | c | req/s | p50 ms | p99 ms | CPU µs/req "
        "| req/s ratio | p50 ratio |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for server in servers:
        first = next(s for s in servers if s.transport == server.transport)
        for c in CONCURRENCIES:
            key = f"{server.transport} {server.name} c={c}"
            base = f"{first.transport} {first.name} c={c}"
            mine = [r[key] for r in rounds]
            rps = statistics.median(r[key].rps / r[base].rps for r in rounds)
            p50 = statistics.median(r[key].p50_ms / r[base].p50_ms for r in rounds)
            lines.append(
                f"| {server.transport} | {server.name} | {c} "
                f"| {statistics.median(s.rps for s in mine):.0f} "
                f"| {statistics.median(s.p50_ms for s in mine):.2f} "
                f"| {statistics.median(s.p99_ms for s in mine):.2f} "
                f"| {statistics.median(s.cpu_us for s in mine):.0f} | {rps:.2f}x | {p50:.2f}x |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=4, help="seconds per measurement")
    parser.add_argument("--baseline", type=Path, help="a checkout from before the tracing hooks")
    args = parser.parse_args()
    servers = [
        Server("floor", "grpc", floor=True),
        Server("gateway, tracing off", "grpc"),
        Server("gateway, tracing on", "grpc", tracing=True),
        Server("gateway, tracing on, 1 in 10 sampled", "grpc", tracing=True, sampler="0.1"),
    ]
    if args.baseline is not None:
        servers.append(Server("gateway before tracing", "http", tree=args.baseline.resolve()))
    servers += [
        Server("gateway, tracing off", "http"),
        Server("gateway, tracing on", "http", tracing=True),
    ]
    sink_port = free_port()
    sink = [sys.executable, str(HERE / "grpc_otlp_sink.py"), "--port", str(sink_port)]
    rounds = []
    with tempfile.TemporaryDirectory() as tmp, process(sink, ROOT, CLIENT_CORE):
        for number in range(args.rounds):
            print(f"round {number + 1} of {args.rounds}", flush=True)
            rounds.append(
                one_round(servers, args.duration, Path(tmp), f"http://127.0.0.1:{sink_port}")
            )
    print(f"\nMachine: {machine()}. {args.rounds} rounds of {args.duration} s per case.\n")
    print(table(servers, rounds))


if __name__ == "__main__":
    main()
