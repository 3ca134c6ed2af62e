"""Count the CPU instructions one inference request costs in the floor and in the gateway.

    python loadtests/bench/instructions.py [--requests 500]

Timings on a shared VM drift by tens of percent; instruction counts under valgrind's callgrind do
not (the same figure to 0.1% run after run). Each app is driven in-process (no HTTP server) twice,
with 0 and with `--requests` requests after the same warm-up; the difference divided by the
requests is the cost of one request. Needs valgrind. The gateway runs every model inline here:
under valgrind a run is slow enough that it would otherwise go to the thread pool.
"""

import argparse
import asyncio
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
MLP = ROOT / "models" / "mlp" / "1" / "model.onnx"


async def drive(app_name: str, requests: int, config: Path) -> None:
    sys.path.insert(0, str(HERE))
    import trace_lines  # the floor's process loads no gateway module: none to collect garbage in

    if app_name == "floor":
        import floor

        await trace_lines.drive(floor.build(MLP), 100 + requests, None)
        return
    from prometheus_client import CollectorRegistry

    from gateway.http import create_app
    from gateway.settings import load_settings

    app = create_app(load_settings(config, env={}), registry=CollectorRegistry())
    async with app.router.lifespan_context(app):
        await trace_lines.drive(app, 100 + requests, None)


def gateway_config(directory: Path) -> Path:
    """mlp as live with a 5% canary of the same file: the benchmark's main case."""
    config = {
        "model_repository": "/",
        "data_dir": str(directory / "data"),
        "inline_run_below_s": 1.0,
        "models": {
            "mlp": {
                "variants": {"v1": {"path": str(MLP)}, "v2": {"path": str(MLP)}},
                "routing": {"live": "v1", "canary": {"variant": "v2", "weight": 0.05}},
            }
        },
    }
    path = directory / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def instructions(app_name: str, requests: int, directory: Path) -> int:
    out = directory / f"{app_name}.{requests}.callgrind"
    command = [
        "valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
        sys.executable, __file__, "--drive", app_name, "--requests", str(requests),
        "--config", str(gateway_config(directory)),
    ]  # fmt: skip
    # Fixed hashing and one BLAS thread: otherwise dict layouts and idle BLAS threads add noise.
    env = {**os.environ, "PYTHONHASHSEED": "0", "OPENBLAS_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
    match = re.search(r"Collected : (\d+)", result.stderr)
    if match is None:
        raise SystemExit(f"valgrind printed no total:\n{result.stderr[-2000:]}")
    return int(match.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--drive", choices=["floor", "gateway"], help=argparse.SUPPRESS)
    parser.add_argument("--config", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.drive:
        asyncio.run(drive(args.drive, args.requests, args.config))
        return
    per_request = {}
    with tempfile.TemporaryDirectory() as temp:
        for app_name in ("floor", "gateway"):
            base = instructions(app_name, 0, Path(temp))
            total = instructions(app_name, args.requests, Path(temp))
            per_request[app_name] = (total - base) / args.requests
            print(f"{app_name}: {per_request[app_name]:,.0f} instructions per request", flush=True)
    print(f"gateway / floor: {per_request['gateway'] / per_request['floor']:.2f}")


if __name__ == "__main__":
    main()
