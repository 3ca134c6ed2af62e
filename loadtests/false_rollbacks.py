"""How often a rollout of an identical variant is rolled back (README "Rollouts"): never, we hope.

    .venv/bin/python loadtests/false_rollbacks.py [--rollouts 20] [--concurrent 5] [--out DIR]

Starts its own redis-server and `gateway serve --workers 2` (on free ports of 127.0.0.1) with
`--rollouts` models, each serving the bundled iris classifier as `live` and the very same file
as `same`. In rounds of `--concurrent`, under locust load (loadtests/rollout_traffic.py, six
users), it rolls `same` out through shadow 100%, canary 10% and canary 50%, with the shipped
analysis thresholds (only the steps' durations and the analysis interval are short), waits for
each to end and prints its outcome, decisions and figures. Results go to DIR/results.json.
Exit code 0 when no rollout was rolled back, 1 otherwise.
"""

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import yaml

ROOT = Path(__file__).resolve().parents[1]
TRAFFIC = ROOT / "loadtests" / "rollout_traffic.py"
IRIS = str(ROOT / "models" / "iris" / "1" / "model.onnx")
PLAN = {
    "variant": "same",
    "steps": [
        {"shadow": 1.0, "duration": "10s", "min_requests": 300},
        {"canary": 0.1, "duration": "10s", "min_requests": 300},
        {"canary": 0.5, "duration": "10s", "min_requests": 300},
    ],
    "analysis": {"interval": "2s"},
}
ROLLOUT_TIMEOUT_S = 300


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(check: Any, timeout: float, what: str) -> Any:
    """Poll `check` until it returns something truthy, or fail naming `what`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            found = check()
        except (httpx.HTTPError, OSError):
            found = None
        if found:
            return found
        time.sleep(0.2)
    raise SystemExit(f"false_rollbacks: {what} did not happen within {timeout:g} s")


@contextmanager
def process(command: list[str], log: Path, env: dict[str, str] | None = None) -> Iterator[None]:
    """Run `command` (output to `log`) for the block; SIGINT (a gateway stops at once, SIGTERM
    would drain first: README "Graceful shutdown"), then SIGKILL, at the end."""
    with log.open("wb") as out:
        environment = {**os.environ, **(env or {})}
        child = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=environment,
                                 start_new_session=True)  # fmt: skip
        try:
            yield
        finally:
            os.killpg(child.pid, signal.SIGINT)
            try:
                child.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(child.pid, signal.SIGKILL)
                child.wait()


def config(directory: Path, models: list[str], redis_url: str) -> Path:
    variants = {"live": {"path": IRIS}, "same": {"path": IRIS}}
    path = directory / "gateway.yaml"
    path.write_text(yaml.safe_dump({
        "model_repository": str(ROOT / "models"), "data_dir": str(directory / "data"),
        "redis_url": redis_url,
        "models": {m: {"variants": variants, "routing": {"live": "live"}} for m in models},
    }))  # fmt: skip
    return path


def run_round(url: str, token: str, models: list[str], out: Path) -> list[dict[str, Any]]:
    """Roll `same` out on every model at once under load; their records when all have ended."""
    headers = {"Authorization": f"Bearer {token}"}
    locust = [sys.executable, "-m", "locust", "-f", str(TRAFFIC), "--headless", "-u", "6",
              "-r", "6", "-t", f"{ROLLOUT_TIMEOUT_S}s", "--host", url,
              "--only-summary"]  # fmt: skip
    with process(
        locust, out / f"locust-{models[0]}.log", {"GATEWAY_TEST_MODELS": ",".join(models)}
    ):
        for model in models:
            answer = httpx.post(f"{url}/admin/models/{model}/rollout", json=PLAN, headers=headers)
            answer.raise_for_status()

        def records() -> list[dict[str, Any]] | None:
            found = [
                httpx.get(f"{url}/admin/models/{m}/rollout", headers=headers).json() for m in models
            ]
            return None if any(r["phase"] == "Progressing" for r in found) else found

        return list(wait_for(records, ROLLOUT_TIMEOUT_S, "the end of every rollout"))


def summary(record: dict[str, Any]) -> dict[str, Any]:
    """Outcome, decisions and the worst figures the analyses saw."""
    ratios, errors = [], 0.0
    for decision in record["decisions"]:
        for check in decision["checks"]:
            figures = check["figures"]
            if check["check"] == "latency" and isinstance(figures.get("p50"), dict):
                ratios.append(figures["p50"]["ratio"])
            if check["check"] == "error_rate":
                errors = max(errors, figures["variant"]["errors"])
    last = record["decisions"][-1]
    return {
        "model": record["model"], "phase": record["phase"],
        "decisions": [d["decision"] for d in record["decisions"]],
        "seconds": round(last["time"] - record["started"], 1),
        "max_p50_ratio": max(ratios, default=None), "variant_errors": errors,
        "reason": last["reason"],
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rollouts", type=int, default=20)
    parser.add_argument("--concurrent", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    redis_server = shutil.which("redis-server")
    if redis_server is None:
        raise SystemExit("false_rollbacks: redis-server is not installed")
    out = args.out or Path(tempfile.mkdtemp(prefix="false-rollbacks-"))
    out.mkdir(parents=True, exist_ok=True)
    models = [f"m{i:02d}" for i in range(args.rollouts)]
    redis_port, port, token = free_port(), free_port(), secrets.token_hex(8)
    url = f"http://127.0.0.1:{port}"
    redis_command = [redis_server, "--port", str(redis_port), "--save", "", "--appendonly", "no"]
    serve = [sys.executable, "-m", "gateway", "serve", "--port", str(port), "--workers", "2",
             "--config", str(config(out, models, f"redis://127.0.0.1:{redis_port}/0"))]  # fmt: skip
    results = []
    with (
        process(redis_command, out / "redis.log"),
        process(serve, out / "gateway.log", {"GATEWAY_ADMIN_TOKEN": token}),
    ):
        wait_for(lambda: httpx.get(f"{url}/v2/health/ready").status_code == 200, 120, "ready")
        for start in range(0, len(models), args.concurrent):
            for record in run_round(url, token, models[start : start + args.concurrent], out):
                results.append(summary(record))
                print(json.dumps(results[-1]), flush=True)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    rolled_back = sum(1 for r in results if r["phase"] == "Degraded")
    healthy = sum(1 for r in results if r["phase"] == "Healthy")
    print(f"{len(results)} rollouts of an identical variant: {healthy} promoted, "
          f"{rolled_back} rolled back, {len(results) - healthy - rolled_back} paused; "
          f"results in {out / 'results.json'}")  # fmt: skip
    return 1 if rolled_back else 0


if __name__ == "__main__":
    sys.exit(main())
