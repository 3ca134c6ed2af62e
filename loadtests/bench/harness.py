"""What the benchmarks here share: the servers (the floor and the gateway) on core 0, wrk on
core 1, and what is read from them (CPU time, memory, /metrics).

`run.py` re-exports these names; `peers.py` reaches them through it.
"""

import contextlib
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import redis
import yaml
from openloop import request_body
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
SERVER_CORE, CLIENT_CORE = "0", "1"
RESULT = re.compile(
    r"RESULT requests=(\d+) errors=(\d+) duration_us=(\d+) p50_us=(\d+) p99_us=(\d+)"
)
WRK_TIMEOUT = "10s"  # wrk's default, 2 s, counts the floor's slowest answers at c=128 as errors


@dataclass(frozen=True)
class Model:
    """A benchmark model: its file and the width of its one FP32 input (batch 1 is sent)."""

    path: str  # relative to the repository
    features: int

    def infer_path(self, name: str) -> str:
        return f"/v2/models/{name}/infer"


MODELS = {
    "mlp": Model("models/mlp/1/model.onnx", 64),  # 64-256-256-10, ~30 µs a run
    "heavy": Model("models/heavy/1/model.onnx", 512),  # 512-2048-2048-512, ~1 ms a run
}


@dataclass(frozen=True)
class Case:
    """One server set-up: the floor, or the gateway with some routing."""

    name: str
    routing: dict[str, Any] | None = None  # None: the floor app
    workers: int = 1
    monitoring: bool = True  # the gateway's model monitoring (README "Monitoring")
    model: str = "mlp"  # a key of MODELS, also the model's name in the route
    # Extra fields of every variant (README "Batching and admission"): max_batch_size, ...
    variant: Mapping[str, Any] = field(default_factory=dict)
    request_timeout_s: float | None = None  # None: the gateway's default
    concurrencies: tuple[int, ...] | None = None  # None: every one the run measures

    @property
    def batching(self) -> bool:
        return bool(self.variant.get("max_batch_size"))


@dataclass
class Sample:
    rps: float
    p50_ms: float
    p99_ms: float
    cpu_us: float  # server CPU time (user + system, all processes) per request
    errors: int


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


def rss_mb(pid: int) -> float:
    """Resident memory of one process (VmRSS), in MB (10**6 bytes, as issue 12's target)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024 / 1e6
    return 0.0


def worker_pids(pid: int) -> list[int]:
    """The processes that serve requests: `pid` itself with one worker; with several, the
    workers uvicorn spawns (not its supervisor, nor multiprocessing's resource tracker)."""
    workers = []
    for child in descendants(pid):
        with contextlib.suppress(OSError):
            if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                workers.append(child)
    return workers or [pid]


def gateway_config(directory: Path, case: Case, redis_url: str | None) -> Path:
    """A config for `case` with its own data directory: a gateway adopts the routing it finds
    stored, so a directory (or Redis) shared with an earlier case would replay that case's
    routing instead of this one's."""
    path = str(ROOT / MODELS[case.model].path)
    variant = {"path": path, **case.variant}
    directory = Path(tempfile.mkdtemp(dir=directory))
    config: dict[str, Any] = {
        "model_repository": "/",
        "data_dir": str(directory / "data"),
        "redis_url": redis_url if case.workers > 1 else None,
        # v2 is the same file under another name: the cost of routing, not of another model.
        "models": {
            case.model: {
                "variants": {"v1": variant, "v2": dict(variant)},
                "routing": case.routing,
                "monitoring": {"enabled": case.monitoring},
            }
        },
    }
    if case.request_timeout_s is not None:
        config["request_timeout_s"] = case.request_timeout_s
    path_out = directory / "gateway.yaml"
    path_out.write_text(yaml.safe_dump(config))
    return path_out


def gateway_command(config: Path, port: int, workers: int = 1) -> list[str]:
    return [
        sys.executable,
        *("-m", "gateway", "serve", "--config", str(config), "--port", str(port)),
        *("--workers", str(workers), "--log-level", "warning"),
    ]


@contextlib.contextmanager
def server(case: Case, directory: Path, redis_url: str | None) -> Iterator[tuple[str, int]]:
    """The case's server on core 0, ready; yields (base url, pid)."""
    port = free_port()
    model = MODELS[case.model]
    if case.routing is None:
        command = [sys.executable, str(HERE / "floor.py"), "--port", str(port)]
        command += ["--model", str(ROOT / model.path), "--name", case.model]
        ready = f"http://127.0.0.1:{port}{model.infer_path(case.model)}"
    else:
        if case.workers > 1 and redis_url is not None:
            redis.Redis.from_url(redis_url).flushdb()  # our own Redis server, not a shared one
        config = gateway_config(directory, case, redis_url)
        command = gateway_command(config, port, case.workers)
        ready = f"http://127.0.0.1:{port}/v2/health/ready"
    with serving(command, ready, request_body(model.features)) as pid:
        yield f"http://127.0.0.1:{port}", pid


@contextlib.contextmanager
def serving(command: list[str], ready: str, body: bytes | None = None) -> Iterator[int]:
    """Run `command` on core 0 in its own session until `ready` answers; stop it after."""
    process = subprocess.Popen(pinned(SERVER_CORE, command), start_new_session=True)
    try:
        wait_ready(ready, process, body)
        yield process.pid
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)


def wait_ready(url: str, process: subprocess.Popen[bytes], body: bytes | None = None) -> None:
    """Poll `url` until it answers 200: a POST of `body` (default: body.json, the mlp model's)
    for an inference route, else a GET."""
    deadline = time.monotonic() + 60
    body = body if body is not None else (HERE / "body.json").read_bytes()
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
    url: str, concurrency: int, seconds: int, delay_ms: int = 0, model: str = "mlp"
) -> tuple[int, int, float, float, float]:
    """Run wrk (infer.lua) on core 1 against `model`'s route; returns requests, errors (non-2xx
    answers and socket errors), seconds, p50 and p99 in ms."""
    command = pinned(
        CLIENT_CORE,
        [
            *("wrk", "-t1", f"-c{concurrency}", f"-d{int(seconds)}s", "--timeout", WRK_TIMEOUT),
            *("-s", str(HERE / "infer.lua"), url),
        ],
    )
    env = {
        **os.environ,
        "BENCH_PATH": MODELS[model].infer_path(model),
        "BENCH_FEATURES": str(MODELS[model].features),
    }
    if delay_ms:
        env["BENCH_DELAY_MS"] = str(delay_ms)
    output = subprocess.run(command, capture_output=True, text=True, check=True, env=env).stdout
    match = RESULT.search(output)
    if match is None:
        raise SystemExit(f"wrk printed no result:\n{output}")
    requests, errors, duration_us, p50_us, p99_us = map(int, match.groups())
    return requests, errors, duration_us / 1e6, p50_us / 1000, p99_us / 1000


def measure(
    url: str, pid: int, concurrency: int, seconds: int, delay_ms: int = 0, model: str = "mlp"
) -> Sample:
    """One wrk measurement after a 1 s warm-up at the same load, with the server's CPU time."""
    # Warm up connections, caches and the inline-cost estimate, at the same load: a warm-up at
    # full speed would leave the partial-load run a shadow queue filled to its end.
    wrk(url, concurrency, 1, delay_ms, model)
    before = cpu_seconds(pid)
    requests, errors, duration, p50, p99 = wrk(url, concurrency, seconds, delay_ms, model)
    cpu = cpu_seconds(pid) - before
    return Sample(requests / duration, p50, p99, cpu / max(requests, 1) * 1e6, errors)


@contextlib.contextmanager
def redis_server(directory: Path) -> Iterator[str]:
    port = free_port()
    process = subprocess.Popen(
        pinned(
            SERVER_CORE,
            [
                *("redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""),
                *("--appendonly", "no", "--dir", str(directory)),
            ],
        ),
        stdout=subprocess.DEVNULL,
    )
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.kill()
        process.wait()


Scrape = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str) -> Scrape:
    """Every sample of the server's /metrics, by (name, sorted labels)."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(httpx.get(f"{url}/metrics").text)
        for sample in family.samples
    }


def metric_sum(samples: Scrape, name: str, **labels: str) -> float:
    """The sum of `name` over the series whose labels include `labels`."""
    return sum(
        value
        for (sample, series), value in samples.items()
        if sample == name and labels.items() <= dict(series).items()
    )


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
