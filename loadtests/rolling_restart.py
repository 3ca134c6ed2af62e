"""Rolling restart under load: two gateway replicas behind one port, restarted one at a time.

    python loadtests/rolling_restart.py [--restarts 10] [--users 8] [--drain 1.0] [--out DIR]

Issue 12's target: "a rolling restart of 2 replicas behind one port under locust load loses zero
requests". Two `gateway serve` processes (embedded mode, each with its own data_dir, the bundled
gateway.yaml's models) listen on two backend ports; `balancer.py` stands in front of them on one
port, the way a Kubernetes Service does (new connections only to replicas whose readiness answers
200, polled every 0.1 s). Locust runs the steady traffic of `locustfile.py` against that port
while each replica in turn, `--restarts` times in all, gets SIGTERM, drains (`drain_s`: ready
answers 503 so the balancer drops it, every answer carries `Connection: close` so kept-alive
clients reconnect to the other replica), exits, and is started again on the same port; the next
restart waits until the balancer sends to it again. This is a Deployment's rolling update with
maxUnavailable 1 and maxSurge 0, on one machine.

Figures, printed and written to DIR/summary.json: requests and failed requests (with locust's
reasons), requests/s, each restart's exit code, seconds from SIGTERM to exit and from start to
ready, and what the balancer did. Exit code 0 when no request failed and every replica exited
0, else 1. `rolling_restart()` returns the same figures to another script.
"""

import argparse
import asyncio
import csv
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from balancer import Balancer, BalancerStats
from local_gateway import CONFIG, ROOT, free_port

HERE = Path(__file__).resolve().parent
LOCUSTFILE = HERE / "locustfile.py"
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 5  # locust users finish the request in flight when stopped: none is cut off


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll `check` until true; the seconds it took. RuntimeError naming `what` at the deadline."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            raise RuntimeError(f"{what} did not happen within {timeout:g} s")
        time.sleep(0.02)
    return time.monotonic() - start


class Replica:
    """One `gateway serve` on a fixed port with its own config and data_dir (embedded mode)."""

    def __init__(self, index: int, folder: Path, drain_s: float) -> None:
        self.index = index
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = folder / f"replica-{index}.log"
        self.config = folder / f"replica-{index}.yaml"
        config: dict[str, Any] = yaml.safe_load(CONFIG.read_text())
        config["model_repository"] = str((CONFIG.parent / config["model_repository"]).resolve())
        config["data_dir"] = str(folder / f"data-{index}")
        config["drain_s"] = drain_s
        self.config.write_text(yaml.safe_dump(config))
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        command = [sys.executable, "-m", "gateway", "serve", "--config", str(self.config),
                   "--host", "127.0.0.1", "--port", str(self.port)]  # fmt: skip
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    def wait_ready(self) -> float:
        """Seconds until `/v2/health/ready` answers 200."""

        def ready() -> bool:
            if self.process is None or self.process.poll() is not None:
                raise RuntimeError(f"replica {self.index} exited early; see {self.log}")
            try:
                with urllib.request.urlopen(f"{self.url}/v2/health/ready", timeout=2) as answer:
                    return bool(answer.status == 200)
            except (urllib.error.URLError, OSError):
                return False

        return wait_for(ready, READY_TIMEOUT_S, f"replica {self.index} ready")

    def terminate(self, timeout: float) -> int:
        """SIGTERM, as Kubernetes stops a pod; the exit code (negative: killed by a signal)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()  # what the kubelet does after terminationGracePeriodSeconds
            self.process.wait()
            return -signal.SIGKILL

    def stop_now(self) -> None:
        """SIGINT: the end of the measurement, no drain needed."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class BalancerThread:
    """`Balancer` on its own event loop in a thread, so this script's waits never stall it."""

    def __init__(self, replicas: list[Replica]) -> None:
        self.balancer = Balancer([("127.0.0.1", r.port) for r in replicas])
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self.port = self._call(self.balancer.start("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.port}"

    def _call(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout=30)

    def sends_to(self, replica: Replica) -> bool:
        return ("127.0.0.1", replica.port) in self.balancer.ready

    @property
    def stats(self) -> BalancerStats:
        return self.balancer.stats

    def stop(self) -> None:
        self._call(self.balancer.stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)


class Locust:
    """Headless locust with the steady traffic against `url`, until stopped."""

    def __init__(self, url: str, users: int, out: Path) -> None:
        self._csv = out / "locust"
        command = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless",
                   "-u", str(users), "-r", str(users), "--host", url, "--scenario", "steady",
                   "--stop-timeout", str(STOP_TIMEOUT_S), "--csv", str(self._csv),
                   "--only-summary"]  # fmt: skip
        self._log = (out / "locust.log").open("wb")
        self.process = subprocess.Popen(
            command, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def stop(self) -> dict[str, Any]:
        """Stop it (SIGTERM: users finish their request); locust's totals and failure reasons."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=STOP_TIMEOUT_S + 30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self._log.close()
        return self._figures()

    def _figures(self) -> dict[str, Any]:
        with open(f"{self._csv}_stats.csv", newline="") as file:
            total = next(row for row in csv.DictReader(file) if row["Name"] == "Aggregated")
        with open(f"{self._csv}_failures.csv", newline="") as file:
            reasons = {
                f"{row['Name']}: {row['Error']}": int(row["Occurrences"])
                for row in csv.DictReader(file)
            }
        return {
            "requests": int(total["Request Count"]),
            "failures": int(total["Failure Count"]),
            "rps": round(float(total["Requests/s"]), 1),
            "p50_ms": float(total["50%"]),
            "p99_ms": float(total["99%"]),
            "failure_reasons": reasons,
        }


def restart(
    replica: Replica, other: Replica, front: BalancerThread, drain_s: float
) -> dict[str, Any]:
    """Stop `replica` as Kubernetes would and start it again; wait until the balancer uses it."""
    wait_for(lambda: front.sends_to(other), READY_TIMEOUT_S, f"replica {other.index} balanced")
    sigterm_at = time.monotonic()
    exit_code = replica.terminate(timeout=drain_s + 10.0 + 10.0)  # drain, shutdown, margin
    stopped_s = time.monotonic() - sigterm_at
    replica.start()
    ready_s = replica.wait_ready()
    wait_for(lambda: front.sends_to(replica), 10, f"replica {replica.index} balanced again")
    return {
        "replica": replica.index,
        "exit_code": exit_code,
        "stop_s": round(stopped_s, 2),
        "ready_s": round(ready_s, 2),
    }


def rolling_restart(
    restarts: int = 10,
    users: int = 8,
    drain_s: float = 1.0,
    settle_s: float = 2.0,
    out: Path | None = None,
) -> dict[str, Any]:
    """Run the measurement (module docstring); its figures. Logs and CSVs go to `out`."""
    with tempfile.TemporaryDirectory(prefix="gateway-rolling-") as scratch:
        folder = out or Path(scratch)
        folder.mkdir(parents=True, exist_ok=True)
        replicas = [Replica(i, folder, drain_s) for i in range(2)]
        front: BalancerThread | None = None
        locust: Locust | None = None
        try:
            for replica in replicas:
                replica.start()
            for replica in replicas:
                replica.wait_ready()
            front = BalancerThread(replicas)
            started = time.monotonic()
            locust = Locust(front.url, users, folder)
            wait_for(lambda: sum(front.stats.connections.values()) >= users, 60, "locust load")
            time.sleep(settle_s)  # steady load on both replicas before the first restart
            rounds = [
                restart(replicas[i % 2], replicas[(i + 1) % 2], front, drain_s)
                for i in range(restarts)
            ]
            time.sleep(settle_s)  # and after the last one
            figures = locust.stop()
            duration_s = time.monotonic() - started
        finally:
            if locust is not None and locust.process.poll() is None:
                locust.process.kill()
            if front is not None:
                front.stop()
            for replica in replicas:
                replica.stop_now()
    exit_codes = [r["exit_code"] for r in rounds]
    return {
        "restarts": restarts,
        "users": users,
        "drain_s": drain_s,
        "duration_s": round(duration_s, 1),
        **figures,
        "exit_codes": exit_codes,
        "rounds": rounds,
        "balancer": front.stats.as_dict(),
        "passed": figures["requests"] > 0 and figures["failures"] == 0 and set(exit_codes) <= {0},
    }


def human_summary(figures: dict[str, Any]) -> str:
    stops = [r["stop_s"] for r in figures["rounds"]]
    readies = [r["ready_s"] for r in figures["rounds"]]
    lines = [
        f"{figures['restarts']} restarts in {figures['duration_s']} s under {figures['users']} "
        f"locust users: {figures['requests']} requests, {figures['failures']} failed, "
        f"{figures['rps']} requests/s, p50 {figures['p50_ms']:g} ms, p99 {figures['p99_ms']:g} ms",
        f"exit codes: {figures['exit_codes']}",
        f"SIGTERM to exit: {min(stops, default=0):g}-{max(stops, default=0):g} s "
        f"(drain_s {figures['drain_s']:g}); start to ready: "
        f"{min(readies, default=0):g}-{max(readies, default=0):g} s",
        f"balancer: {figures['balancer']}",
    ]
    lines += [f"failed: {n} x {reason}" for reason, n in figures["failure_reasons"].items()]
    lines.append("PASSED" if figures["passed"] else "FAILED")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--restarts", type=int, default=10, help="replica restarts in all")
    parser.add_argument("--users", type=int, default=8, help="concurrent locust users")
    parser.add_argument("--drain", type=float, default=1.0, help="each replica's drain_s")
    parser.add_argument("--settle", type=float, default=2.0, help="seconds of load before/after")
    parser.add_argument("--out", type=Path, help="folder for logs, CSVs and summary.json")
    args = parser.parse_args(argv)
    if args.out is None:
        args.out = HERE / "results" / f"rolling-restart-{time.strftime('%Y%m%d-%H%M%S')}"
    figures = rolling_restart(args.restarts, args.users, args.drain, args.settle, args.out)
    (args.out / "summary.json").write_text(json.dumps(figures, indent=2))
    print(human_summary(figures))
    print(f"logs: {args.out}")
    return 0 if figures["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
