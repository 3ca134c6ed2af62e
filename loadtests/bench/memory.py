"""Memory of the gateway serving the bundled models (`gateway.yaml`): resident memory (RSS) of
each worker when ready and after a short load, and, opt-in, over a long load (the soak).

The load is wrk with `mixed.lua`: every bundled model in turn, on core 1, the gateway on core 0.
"""

import contextlib
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import redis
import yaml
from harness import (
    CLIENT_CORE,
    HERE,
    RESULT,
    ROOT,
    free_port,
    gateway_command,
    pinned,
    rss_mb,
    serving,
    worker_pids,
)

LOAD_CONNECTIONS = 8
SOAK_SAMPLE_S = 10.0
SOAK_BASELINE_S = 60.0  # RSS is compared with its value after the first minute of load


@dataclass
class Footprint:
    """RSS (MB) of each worker, when ready and after `seconds` of load."""

    workers: int
    ready: list[float]
    loaded: list[float]
    seconds: float
    requests_per_s: float = 0.0


@dataclass
class Soak:
    seconds: float
    times: list[float] = field(default_factory=list)  # since the load began
    rss: list[list[float]] = field(default_factory=list)  # per sample, per worker (MB)
    requests_per_s: float = 0.0
    errors: int = 0

    def baseline(self) -> float:
        """Total RSS of the first sample at or after SOAK_BASELINE_S."""
        return next(
            sum(r) for t, r in zip(self.times, self.rss, strict=True) if t >= SOAK_BASELINE_S
        )

    def growth(self) -> float:
        """Largest total RSS after the baseline, relative to it (0.03: 3% larger)."""
        later = [sum(r) for t, r in zip(self.times, self.rss, strict=True) if t >= SOAK_BASELINE_S]
        return max(later) / self.baseline() - 1


def bundled_config(directory: Path, redis_url: str | None) -> Path:
    """gateway.yaml as it is, its relative paths resolved, with a data directory of its own."""
    config = yaml.safe_load((ROOT / "gateway.yaml").read_text())
    config["model_repository"] = str(ROOT / config.get("model_repository", "."))
    config["data_dir"] = str(Path(tempfile.mkdtemp(dir=directory)) / "data")
    config["redis_url"] = redis_url
    path = Path(tempfile.mkdtemp(dir=directory)) / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@contextlib.contextmanager
def bundled(directory: Path, workers: int, redis_url: str | None) -> Iterator[tuple[str, int]]:
    """A gateway serving the bundled models on core 0; yields (base url, pid)."""
    if redis_url is not None:
        redis.Redis.from_url(redis_url).flushdb()
    port = free_port()
    config = bundled_config(directory, redis_url if workers > 1 else None)
    command = gateway_command(config, port, workers)
    with serving(command, f"http://127.0.0.1:{port}/v2/health/ready") as pid:
        time.sleep(1.0)  # workers report ready one by one: let the last settle
        yield f"http://127.0.0.1:{port}", pid


def mixed_load(url: str, seconds: float) -> tuple[int, int, float]:
    """wrk with mixed.lua on core 1; returns requests, errors and seconds."""
    command = [
        *("wrk", "-t1", f"-c{LOAD_CONNECTIONS}", f"-d{int(seconds)}s", "--timeout", "10s"),
        *("-s", str(HERE / "mixed.lua"), url),
    ]
    output = subprocess.run(
        pinned(CLIENT_CORE, command), capture_output=True, text=True, check=True
    ).stdout
    match = RESULT.search(output)
    if match is None:
        raise SystemExit(f"wrk printed no result:\n{output}")
    requests, errors, duration_us = map(int, match.groups()[:3])
    return requests, errors, duration_us / 1e6


def footprint(directory: Path, workers: int, redis_url: str | None, seconds: float) -> Footprint:
    """RSS per worker when ready, and after `seconds` of mixed load."""
    with bundled(directory, workers, redis_url) as (url, pid):
        pids = worker_pids(pid)
        ready = [rss_mb(worker) for worker in pids]
        requests, _, duration = mixed_load(url, seconds)
        loaded = [rss_mb(worker) for worker in pids]
    return Footprint(workers, ready, loaded, seconds, requests / duration)


def soak(directory: Path, seconds: float) -> Soak:
    """One worker under mixed load for `seconds`, its RSS sampled every SOAK_SAMPLE_S."""
    result = Soak(seconds)
    with bundled(directory, 1, None) as (url, pid):
        outcome: list[tuple[int, int, float]] = []
        load = threading.Thread(target=lambda: outcome.append(mixed_load(url, seconds)))
        began = time.monotonic()
        load.start()
        while load.is_alive():
            result.times.append(time.monotonic() - began)
            result.rss.append([rss_mb(worker) for worker in worker_pids(pid)])
            load.join(timeout=SOAK_SAMPLE_S)
        requests, result.errors, duration = outcome[0]
        result.requests_per_s = requests / duration
    return result
