"""Run one load-test scenario against the gateway, judge it, and write its report.

    python loadtests/run.py SCENARIO [--duration 20s] [--users 8] [--spawn-rate 8]
                            [--url URL] [--out DIR]

Without --url it starts its own gateway (gateway.yaml's models, a temp data_dir, a random admin
token) on a free port and stops it at the end. It runs locust headless as a subprocess (locust
patches the whole process with gevent, which this script keeps out of), then writes to DIR:
locust's CSV files and HTML report, `record.json` (what the scenario saw), `summary.json`,
`plot.png` (and `rollout.png` for the rollout scenario), and the logs of locust and the
gateway. Exit code 0 when every threshold passed, 1 when a request failed or a threshold was
missed, 2 for a usage error.
"""

import argparse
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

from local_gateway import ROOT, LocalGateway
from reporting.plot import plot_run
from reporting.rollout_plot import plot_shares
from reporting.summary import build_summary, human_summary

HERE = Path(__file__).resolve().parent
LOCUSTFILE = HERE / "locustfile.py"
SCENARIOS = ("steady", "canary_ramp", "flip", "rollback", "rollout")
STOP_TIMEOUT_S = 5  # users finish their request in flight, so the end counts no failure
GRACE_S = 60  # locust start-up, stop and report writing, beyond the run time


def parse_duration(text: str) -> int:
    """Seconds in "20", "20s", "2m" or "1m30s" (the forms locust's --run-time takes)."""
    match = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s?)?", text.strip())
    if not text.strip() or match is None:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a duration like 20s, 2m or 1m30s")
    hours, minutes, seconds = (int(part or 0) for part in match.groups())
    total = hours * 3600 + minutes * 60 + seconds
    if total < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: the run needs at least one second")
    return total


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("scenario", choices=SCENARIOS)
    parser.add_argument("--duration", type=parse_duration, default="20s", help="run time")
    parser.add_argument("--users", type=int, default=8, help="concurrent locust users")
    parser.add_argument("--spawn-rate", type=float, default=8, help="users started per second")
    parser.add_argument("--url", help="an already running gateway (default: start one)")
    parser.add_argument("--out", type=Path, help="output folder (default: loadtests/results/...)")
    args = parser.parse_args(argv)
    if args.out is None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        args.out = HERE / "results" / f"{args.scenario}-{stamp}"
    if args.url and args.scenario != "steady" and not os.environ.get("GATEWAY_ADMIN_TOKEN"):
        parser.error(f"{args.scenario} changes routing: set GATEWAY_ADMIN_TOKEN for --url")
    return args


def locust_command(args: argparse.Namespace, url: str) -> list[str]:
    out: Path = args.out
    return [
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless",
        "-u", str(args.users), "-r", str(args.spawn_rate), "-t", f"{args.duration}s",
        "--host", url, "--stop-timeout", str(STOP_TIMEOUT_S),
        "--csv", str(out / "locust"), "--csv-full-history", "--html", str(out / "report.html"),
        "--only-summary", "--scenario", args.scenario,
        "--scenario-record", str(out / "record.json"),
    ]  # fmt: skip


def run_locust(args: argparse.Namespace, url: str, token: str) -> int:
    """Locust's exit code; its output goes to locust.log. Killed if it overruns the run time."""
    env = {**os.environ, "GATEWAY_ADMIN_TOKEN": token}
    with (args.out / "locust.log").open("wb") as log:
        process = subprocess.Popen(
            locust_command(args, url), cwd=ROOT, env=env,
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        try:
            return process.wait(timeout=args.duration + STOP_TIMEOUT_S + GRACE_S)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            return -signal.SIGKILL


def read_record(path: Path, scenario: str) -> dict[str, Any]:
    """The scenario record, or an empty one that says it is missing (locust did not finish)."""
    if path.exists():
        record: dict[str, Any] = json.loads(path.read_text())
        return record
    missing = [f"{path.name} was not written: locust did not finish"]
    empty: dict[str, Any] = {"phases": [], "by_variant": {}, "by_revision": {}, "buckets": []}
    return {"scenario": scenario, **empty, "admin_errors": [], "notes": missing, "locust": {}}


def gateway_for(args: argparse.Namespace, token: str) -> AbstractContextManager[Any]:
    if args.url:
        return nullcontext(argparse.Namespace(url=args.url.rstrip("/")))
    return LocalGateway(token, args.out / "gateway.log")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    token = os.environ.get("GATEWAY_ADMIN_TOKEN") if args.url else secrets.token_hex(16)
    with gateway_for(args, token or "") as gateway:
        print(f"running {args.scenario} for {args.duration} s against {gateway.url} ...")
        locust_exit = run_locust(args, gateway.url, token or "")
    record = read_record(args.out / "record.json", args.scenario)
    summary = build_summary(args.scenario, record, locust_exit)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    title = f"{args.scenario}: {summary['requests']} requests, {summary['failures']} failed"
    plot_run(record, title, args.out / "plot.png")
    rollout = record.get("rollout")
    if rollout:
        outcome = f"{rollout['plan']['variant']} on {rollout['model']}: {rollout['phase']}"
        plot_shares(record, f"{title}; rollout of {outcome}", args.out / "rollout.png")
    print(human_summary(summary))
    print(f"report: {args.out}")
    return 0 if summary["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
