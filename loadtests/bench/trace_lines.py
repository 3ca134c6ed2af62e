"""Count the Python lines one inference request executes, in the floor and in the gateway.

    python loadtests/bench/trace_lines.py [--requests 10] [--top 25]

Timings on a shared machine drift by tens of percent from run to run; the number of Python lines
a request executes does not. This drives both ASGI apps in-process (no HTTP server, no network)
with the benchmark's body and prints lines per request by file and by function, so a change to
the request path can be judged before any load test.
"""

import argparse
import asyncio
import collections
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import FrameType
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))
import floor  # noqa: E402  (a sibling script, not a package)

App = Callable[..., Awaitable[None]]
BODY = (HERE / "body.json").read_bytes()
PATH = "/v2/models/mlp/infer"


def scope() -> dict[str, Any]:
    headers = [
        (b"host", b"bench"),
        (b"content-type", b"application/json"),
        (b"content-length", str(len(BODY)).encode()),
    ]
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": PATH,
        "raw_path": PATH.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 2),
    }


async def drive(
    app: App, requests: int, counts: collections.Counter[tuple[str, str]] | None
) -> None:
    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": BODY, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start" and message["status"] != 200:
            raise SystemExit(f"status {message['status']}")

    def local(frame: FrameType, event: str, arg: object) -> Any:
        if event == "line" and counts is not None and frame.f_code.co_filename != __file__:
            code = frame.f_code
            where = code.co_filename.split("site-packages/")[-1].removeprefix(str(ROOT) + "/")
            counts[(where, code.co_name)] += 1
        return local

    for _ in range(requests):
        if counts is not None:
            sys.settrace(lambda frame, event, arg: local)
        await app(scope(), receive, send)
        sys.settrace(None)


async def count(app: App, requests: int) -> collections.Counter[tuple[str, str]]:
    await drive(app, 50, None)  # warm up: first calls build caches, children, cost estimates
    counts: collections.Counter[tuple[str, str]] = collections.Counter()
    await drive(app, requests, counts)
    return counts


def report(
    name: str, counts: collections.Counter[tuple[str, str]], requests: int, top: int
) -> None:
    by_file: collections.Counter[str] = collections.Counter()
    for (where, _), lines in counts.items():
        by_file[where] += lines
    print(f"\n{name}: {sum(counts.values()) / requests:.0f} Python lines per request")
    for where, lines in by_file.most_common(top):
        print(f"  {lines / requests:6.1f}  {where}")


async def main() -> None:
    # Imported here, not at the top: instructions.py drives the floor without loading the gateway.
    from prometheus_client import CollectorRegistry

    from gateway.http import create_app
    from gateway.settings import load_settings

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=10)
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    floor_counts = await count(
        floor.build(ROOT / "models" / "mlp" / "1" / "model.onnx"), args.requests
    )
    report("floor", floor_counts, args.requests, args.top)
    app = create_app(load_settings(ROOT / "gateway.yaml", env={}), registry=CollectorRegistry())
    async with app.router.lifespan_context(app):
        report("gateway (mlp, live only)", await count(app, args.requests), args.requests, args.top)


if __name__ == "__main__":
    asyncio.run(main())
