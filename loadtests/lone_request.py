"""Where a lone request's time goes: the floor and the gateway, one request at a time (c=1).

    python loadtests/lone_request.py count [--requests 300] [--cases CASE ...] [--gateway DIR]
    python loadtests/lone_request.py timeline [--requests 100] [--cases CASE ...] [--gateway DIR]
    python loadtests/lone_request.py time [--requests 3000] [--rounds 5] [--stages] [--gateway DIR]

docs/lone-request.md reads its figures. A case is served as uvicorn serves it (its httptools
protocol with the options its command line gives uvicorn, the lifespan started) on a stand-in
transport: one connection, one request at a time, each request the bytes wrk sends in the
benchmark (`loadtests/bench/infer.lua`), on a uvloop event loop. Left out: the kernel (one read
and two writes a request, in every case) and the client. Each case runs in a process of its own:
cases served in turn in one process share uvicorn's code, whose specialised bytecode (CPython
3.11) then keeps flipping between their types, which moved a request's count by up to 18,000
instructions, in phases.

Cases: `floor` (`loadtests/bench/floor.py`, as it runs uvicorn); `gateway` (mlp as live with a
5% canary of the same file, monitoring on: the benchmark's main case, as `gateway serve` runs
uvicorn); `gateway-uvicorn-protocol` (the same on uvicorn's own protocol: what
`gateway/http/protocol.py` costs); `echo`, `echo-gateway-protocol`, `echo-gateway-headers` (an app
that reads the body and answers a fixed one: what uvicorn costs by itself, on its protocol and on
the gateway's, with the floor's headers or the gateway's).

Modes:
- `count`: under valgrind's callgrind (needs valgrind, gcc and Python's headers: a small C
  extension built on the fly dumps the count at each marker): instructions per request, within
  about 0.3% run after run on a machine whose timings drift by tens of percent;
- `timeline`: floor and gateway (those of `--cases`) under callgrind, with markers at the stages
  of a request (around what the request calls, in both apps and in uvicorn): instructions per
  stage, each including a marker and the wrapper around the call;
- `time`: floor and gateway without valgrind, `--rounds` fresh processes each, in turn so that
  machine noise hits both alike: median µs per request (per stage too with `--stages`).

`--gateway DIR` serves the `gateway` package found in DIR (a copy of another version, for a
before and after). Timers fire by the clock, which valgrind slows fiftyfold: the gateway's are
stopped and their work measured once after the requests: the monitor's fold (every 50 ms, here
of the measured requests' answers, sampled as 50 ms of them would be), the rollout tick (every
0.5 s) and the shadow log's flush (every 0.1 s).
"""

import argparse
import asyncio
import contextlib
import functools
import json
import os
import re
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import uvloop

HERE = Path(__file__).resolve().parent
MLP = HERE.parent / "models" / "mlp" / "1" / "model.onnx"
WARM_UP = 50
VALUES = ",".join(f"{(i % 7) / 7:.3f}" for i in range(1, 65))  # infer.lua's body
BODY = f'{{"inputs":[{{"name":"input","datatype":"FP32","shape":[1,64],"data":[{VALUES}]}}]}}'
REQUEST = (
    "POST /v2/models/mlp/infer HTTP/1.1\r\nHost: 127.0.0.1:8000\r\n"
    f"Content-Type: application/json\r\nContent-Length: {len(BODY)}\r\n\r\n{BODY}"
).encode()
CASES = (
    "floor",
    "gateway",
    "gateway-uvicorn-protocol",
    "echo",
    "echo-gateway-protocol",
    "echo-gateway-headers",
)
TIMED = ("time", "time-stages")  # drive's modes without valgrind
PERIODIC = ("fold", "rollout tick", "shadow flush")

Mark = Callable[[str], None]
mark: Mark = lambda label: None  # noqa: E731  (set by drive while requests are measured)


# -- the cases ------------------------------------------------------------------------------------


class Transport:
    """A connection's transport that keeps nothing: writes are counted, reads never paused."""

    def __init__(self) -> None:
        self.written = 0

    def write(self, data: bytes) -> None:
        self.written += len(data)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 50000)}.get(
            name, default
        )

    def is_closing(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return 0

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    def close(self) -> None: ...


class Served:
    """An app behind uvicorn's protocol, on one connection."""

    def __init__(self, app: Any, **options: Any) -> None:
        from uvicorn.config import Config
        from uvicorn.lifespan.on import LifespanOn
        from uvicorn.server import ServerState

        self.config = Config(app, log_level="warning", access_log=False, **options)
        self.config.load()
        self.lifespan = LifespanOn(self.config)
        self.state = ServerState()
        date = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime()).encode()
        self.state.default_headers = [(b"date", date), *self.config.encoded_headers]
        self.gateway: Any = None

    async def start(self) -> None:
        await self.lifespan.startup()
        self.protocol = self.config.http_protocol_class(
            config=self.config, server_state=self.state, app_state=self.lifespan.state
        )
        self.protocol.connection_made(Transport())
        self.gateway = getattr(self.config.loaded_app, "gateway", None)
        if self.gateway is not None:
            await stop_timers(self.gateway)

    async def one(self) -> None:
        """Serve one request, from its bytes arriving to the end of its task."""
        mark("start")
        self.protocol.data_received(REQUEST)
        (task,) = self.state.tasks
        await task
        del task  # freed here, as in a server, not when the next request comes
        mark("end")

    async def periodic(self) -> None:
        """The timers' work, once: a fold of the answers so far, a rollout tick and a shadow log
        flush (nothing to judge or write: the case has no rollout and no shadow)."""
        if self.gateway is None:
            return
        from gateway.monitoring.monitor import FOLD_INTERVAL_S

        monitor = self.gateway.monitor
        mark("to fold")
        await monitor._fold_pending(monitor._folded_at + FOLD_INTERVAL_S)  # 50 ms: its budget
        mark("fold")
        mark("to rollout tick")
        await self.gateway.rollouts.tick()
        mark("rollout tick")
        mark("to shadow flush")
        await self.gateway.shadow_log._flush()
        mark("shadow flush")

    async def stop(self) -> None:
        self.protocol.connection_lost(None)
        await self.lifespan.shutdown()


async def stop_timers(gateway: Any) -> None:
    await gateway.monitor.stop()
    for owner, name in ((gateway.rollouts, "_task"), (gateway.shadow_log, "_writer")):
        task = getattr(owner, name)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        setattr(owner, name, None)


def build(case: str, directory: Path) -> Served:
    if case == "floor":
        sys.path.insert(0, str(HERE / "bench"))
        import floor

        return Served(floor.build(MLP))  # uvicorn.run's defaults, as floor.py runs it
    if case.startswith("gateway"):
        return gateway_case(directory, stock=case == "gateway-uvicorn-protocol")
    headers = CONTRACT if case == "echo-gateway-headers" else JSON
    return echo_case(headers, gateway_protocol=case != "echo")


def gateway_case(directory: Path, stock: bool) -> Served:
    from prometheus_client import CollectorRegistry

    from gateway.http import create_app
    from gateway.http.protocol import GatewayHttpProtocol
    from gateway.settings import load_settings

    sys.path.insert(0, str(HERE / "bench"))
    from instructions import gateway_config  # the same case: mlp live + a 5% canary of it

    settings = load_settings(gateway_config(directory), env={})
    protocol = functools.partial(
        GatewayHttpProtocol,
        max_header_line_bytes=settings.max_header_line_bytes,
        max_request_head_bytes=settings.max_request_head_bytes,
    )
    return Served(
        create_app(settings, registry=CollectorRegistry()),
        server_header=False,  # as `gateway serve` runs uvicorn (gateway/cli.py)
        proxy_headers=False,
        http="httptools" if stock else protocol,
    )


JSON = [(b"content-type", b"application/json")]
CONTRACT = [
    *JSON,
    (b"x-request-id", b"0123456789ab-1"),
    (b"x-gateway-variant", b"v1"),
    (b"x-gateway-role", b"live"),
    (b"x-gateway-revision", b"1"),
]


def echo_case(headers: list[tuple[bytes, bytes]], gateway_protocol: bool) -> Served:
    body = b'{"model_name":"mlp","model_version":"v1","id":"0123456789ab-1","outputs":[]}'
    answer = [*headers, (b"content-length", str(len(body)).encode())]

    async def echo(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": answer})
        await send({"type": "http.response.body", "body": body})

    protocol: Any = "httptools"
    if gateway_protocol:
        from gateway.http.protocol import GatewayHttpProtocol

        protocol = GatewayHttpProtocol
    return Served(echo, server_header=False, proxy_headers=False, http=protocol)


# -- markers at the stages of a request: wrappers around what the request calls ----------------


def around(label: str, function: Callable[..., Any]) -> Callable[..., Any]:
    """Marks "to `label`" before the call and `label` after it."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        mark(f"to {label}")
        result = function(*args, **kwargs)
        mark(label)
        return result

    return wrapper


def around_async(label: str, function: Callable[..., Awaitable[Any]]) -> Callable[..., Any]:
    @functools.wraps(function)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        mark(f"to {label}")
        result = await function(*args, **kwargs)
        mark(label)
        return result

    return wrapper


def after(label: str, function: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        result = function(*args, **kwargs)
        mark(label)
        return result

    return wrapper


def entered(label: str, function: Callable[..., Awaitable[Any]]) -> Callable[..., Any]:
    @functools.wraps(function)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        mark(label)
        return await function(*args, **kwargs)

    return wrapper


class _Proxy:
    """A module or object whose named attributes are replaced (by marked wrappers)."""

    def __init__(self, target: Any, **replaced: Callable[..., Any]) -> None:
        self._target = target
        self.__dict__.update(replaced)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._target, name)


def instrument(served: Served) -> None:
    from uvicorn.protocols.http import httptools_impl

    cycle = httptools_impl.RequestResponseCycle
    cycle.run_asgi = entered("task runs", cycle.run_asgi)  # type: ignore[method-assign]
    send = cycle.send

    async def marked_send(self: Any, message: dict[str, Any]) -> None:
        kind = message["type"].rsplit(".", 1)[1]
        mark(f"to send {kind}")
        await send(self, message)
        mark(f"send {kind}")

    cycle.send = marked_send  # type: ignore[method-assign]
    served.protocol.app = entered("app", served.protocol.app)
    (instrument_gateway if served.gateway is not None else instrument_floor)(served)


def instrument_floor(served: Served) -> None:
    import floor
    from starlette.requests import Request
    from starlette.routing import Route, request_response

    app = served.config.loaded_app.app  # inside uvicorn's proxy headers middleware
    route = next(r for r in app.routes if isinstance(r, Route))
    infer = route.endpoint
    cells = dict(zip(infer.__code__.co_freevars, infer.__closure__, strict=True))
    session = cells["session"].cell_contents
    cells["session"].cell_contents = _Proxy(session, run=around("model run", session.run))
    route.app = request_response(entered("endpoint", infer))
    Request.body = around_async("read body", Request.body)  # type: ignore[method-assign]
    floor.orjson = _Proxy(
        floor.orjson,
        loads=around("decode: json", floor.orjson.loads),
        dumps=around("encode", floor.orjson.dumps),
    )
    floor.np = _Proxy(floor.np, asarray=after("decode: tensor", floor.np.asarray))
    floor.Response = around("response object", floor.Response)


def instrument_gateway(served: Served) -> None:
    from gateway.http import inference
    from gateway.http.inference import InferenceEndpoint

    service = served.config.loaded_app.service
    endpoint = InferenceEndpoint
    endpoint.__call__ = entered("endpoint", endpoint.__call__)  # type: ignore[method-assign]
    inference.read_body = around_async("read body", inference.read_body)
    inference.INFER._decode = around("decode", inference.INFER._decode)
    inference.INFER._encode = around("encode", inference.INFER._encode)
    service.route = around("route", service.route)
    service.session = around("session lookup", service.session)
    service.admit = around("admit", service.admit)
    service.infer = around_async("service.infer", service.infer)
    for variants in service.repository.models.values():
        for session in variants.values():
            session.validate = around("validate", session.validate)
            session._run = around("model run", session._run)
    runner = service.scheduler.runner
    runner.run_inline = around("scheduler -> inline run", runner.run_inline)
    metrics = service.metrics
    metrics.observe_inference = around("metrics: inference", metrics.observe_inference)
    metrics.observe_request = around("metrics: request", metrics.observe_request)
    if service.observe is not None:
        service.observe = around("monitor.observe", service.observe)


# -- serving a case (in a process of its own) -----------------------------------------------------


def drive(mode: str, case: str, requests: int) -> None:
    """Serve `case` under valgrind (`count`, `timeline`) or timed (`time`, `time-stages`):
    markers dump callgrind's counts, or the times between markers are printed as JSON."""
    global mark
    marks: list[tuple[str, float]] = []

    async def main() -> None:
        global mark
        with tempfile.TemporaryDirectory() as temp:
            served = build(case, Path(temp))
            await served.start()
            if mode in ("timeline", "time-stages"):
                instrument(served)
            if mode not in TIMED:
                import cgmark  # built by `build_cgmark`

                cgmark.start()
            for _ in range(WARM_UP):
                await served.one()
            if served.gateway is not None:  # the warm-up's answers: not in the fold measured
                await served.gateway.monitor._fold_pending(time.time())
            mark = marker(mode, marks)
            for _ in range(10):  # a marker's own cost
                mark("to marker")
                mark("marker")
            for _ in range(requests):
                await served.one()
            await served.periodic()
            mark = lambda label: None  # noqa: E731
            await served.stop()

    uvloop.run(main())
    if mode in TIMED:
        print(json.dumps(marks))


def marker(mode: str, marks: list[tuple[str, float]]) -> Mark:
    if mode in TIMED:
        clock = time.perf_counter_ns
        last = [clock()]

        def stamp(label: str) -> None:
            now = clock()
            marks.append((label, (now - last[0]) / 1000))
            last[0] = now

        return stamp
    import cgmark

    labels: dict[str, bytes] = {}

    def dump(label: str) -> None:
        cgmark.dump(labels.get(label) or labels.setdefault(label, label.encode()))

    return dump


def stages(marks: list[tuple[str, float]]) -> dict[str, list[float]]:
    """Each stage ("marker before -> marker") and its figures, each what was counted or timed
    between the two markers; "a request" sums a request's stages, "start" to "end"."""
    found: dict[str, list[float]] = defaultdict(list)
    previous, whole = "", 0.0
    for label, figure in marks:
        if previous:
            found[f"{previous} -> {label}"].append(figure)
        whole = 0.0 if label == "start" else whole + figure
        if label == "end":
            found["a request"].append(whole)
        previous = label
    return found


# -- under valgrind -----------------------------------------------------------------------------


def environment(gateway: Path | None, *more: Path) -> dict[str, str]:
    path = [*map(str, more), *([str(gateway)] if gateway else []), os.environ.get("PYTHONPATH", "")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(path)}


def valgrind(mode: str, case: str, requests: int, gateway: Path | None) -> dict[str, list[float]]:
    with tempfile.TemporaryDirectory() as temp:
        directory = Path(temp)
        build_cgmark(directory)
        command = [
            "valgrind", "--tool=callgrind", f"--callgrind-out-file={directory / 'callgrind.out'}",
            "--separate-threads=yes", "--instr-atstart=no", "--dump-line=no",
            sys.executable, __file__, "drive", mode, case, "--requests", str(requests),
        ]  # fmt: skip
        # Fixed hashing and one BLAS thread: otherwise dict layouts and idle BLAS threads add noise.
        env = {
            **environment(gateway, directory),
            "PYTHONHASHSEED": "0",
            "OPENBLAS_NUM_THREADS": "1",
        }
        result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=directory)
        if result.returncode:
            raise SystemExit(f"valgrind failed:\n{result.stderr[-3000:]}")
        return stages(read_dumps(directory))


CGMARK = r"""
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <valgrind/callgrind.h>
static PyObject *start(PyObject *self, PyObject *unused) {
    CALLGRIND_START_INSTRUMENTATION;
    Py_RETURN_NONE;
}
static PyObject *dump(PyObject *self, PyObject *label) {
    CALLGRIND_DUMP_STATS_AT(PyBytes_AS_STRING(label));
    Py_RETURN_NONE;
}
static PyMethodDef methods[] = {
    {"start", start, METH_NOARGS, NULL}, {"dump", dump, METH_O, NULL}, {NULL, NULL, 0, NULL}};
static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "cgmark", NULL, -1, methods};
PyMODINIT_FUNC PyInit_cgmark(void) { return PyModule_Create(&module); }
"""


def build_cgmark(directory: Path) -> None:
    """`cgmark.start()`: callgrind starts counting (start-up runs uninstrumented, several times
    faster); `cgmark.dump(label)`: it writes its counts since the last dump, under `label`."""
    source = directory / "cgmark.c"
    source.write_text(CGMARK)
    target = directory / f"cgmark{sysconfig.get_config_var('EXT_SUFFIX')}"
    include = sysconfig.get_paths()["include"]
    command = ["gcc", "-O2", "-shared", "-fPIC", f"-I{include}", str(source), "-o", str(target)]
    subprocess.run(command, check=True)


def read_dumps(directory: Path) -> list[tuple[str, float]]:
    """(label, instructions since the dump before) of every marker's dump, in order: the event
    loop's thread only. Other threads (onnxruntime's, the shadow log's) run whenever valgrind,
    which runs one thread at a time, lets them: counted with the request they happened to
    interleave with, they would add noise, not cost (natively they sleep)."""
    found = []
    for path in directory.glob("callgrind.out.*-01"):
        text = path.read_text()
        label = re.search(r"^desc: Trigger: Client Request: (.*)$", text, re.M)
        total = re.search(r"^summary: (\d+)", text, re.M)
        if label and total:
            part = int(path.name.removeprefix("callgrind.out.").split("-")[0])
            found.append((part, label.group(1), float(total.group(1))))
    return [(label, total) for _, label, total in sorted(found)]


# -- modes ----------------------------------------------------------------------------------------


def count(cases: list[str], requests: int, gateway: Path | None) -> None:
    where = f" (the gateway package from {gateway})" if gateway else ""
    print(f"instructions per request{where}: {requests} requests after {WARM_UP}, each case")
    print("in a process of its own; the median, min and p90 of its requests")
    print(f"{'case':26s} {'median':>9s} {'min':>9s} {'p90':>9s}")
    medians = {}
    for case in cases:
        found = valgrind("count", case, requests, gateway)
        marker_cost = statistics.median(found["to marker -> marker"])
        values = sorted(value - marker_cost for value in found["a request"])
        medians[case] = median = statistics.median(values)
        ratio = f"{median / medians['floor']:.3f} x floor" if "floor" in medians else ""
        p90 = values[len(values) * 9 // 10]
        print(f"{case:26s} {median:9,.0f} {values[0]:9,.0f} {p90:9,.0f}   {ratio}")
        for name in PERIODIC:
            if f"to {name} -> {name}" in found:
                cost = found[f"to {name} -> {name}"][0] - marker_cost
                print(f"{'':26s} {name}: {cost:,.0f} instructions once")


def timeline(cases: list[str], requests: int, gateway: Path | None) -> None:
    print(f"median instructions per request, by stage ({requests} requests after {WARM_UP})")
    for case in cases:
        found = valgrind("timeline", case, requests, gateway)
        marker_cost = statistics.median(found.pop("to marker -> marker"))
        print(
            f"\n{case} (a marker costs {marker_cost:,.0f}; each stage but the first includes one)"
        )
        for stage, values in found.items():
            if stage != "marker -> start":
                print(f"  {statistics.median(values):10,.0f}  {stage}")


def time_cases(requests: int, rounds: int, by_stage: bool, gateway: Path | None) -> None:
    mode = "time-stages" if by_stage else "time"
    medians: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for _ in range(rounds):
        for case in ("floor", "gateway"):
            command = [sys.executable, __file__, "drive", mode, case, "--requests", str(requests)]
            out = subprocess.run(
                command, capture_output=True, text=True, check=True, env=environment(gateway)
            ).stdout
            for stage, values in stages(json.loads(out.splitlines()[-1])).items():
                medians[case][stage].append(statistics.median(values))
    floor, ours = medians["floor"]["a request"], medians["gateway"]["a request"]
    ratios = [mine / theirs for mine, theirs in zip(ours, floor, strict=True)]
    print(f"µs per request: the median of {rounds} rounds' medians ({requests} requests each)")
    print(f"floor {statistics.median(floor):.1f}, gateway {statistics.median(ours):.1f}: ", end="")
    print(
        f"{statistics.median(ratios):.3f} x floor (rounds: {min(ratios):.3f} to {max(ratios):.3f})"
    )
    if by_stage:
        for case, found in medians.items():
            print(f"\n{case}: median µs by stage (each stage but the first includes a marker)")
            for stage, values in found.items():
                if stage not in ("marker -> start", "to marker -> marker"):
                    print(f"  {statistics.median(values):8.2f}  {stage}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["count", "timeline", "time", "drive"])
    parser.add_argument("drive", nargs="*", help=argparse.SUPPRESS)  # drive's mode and case
    parser.add_argument("--requests", type=int, help="per case (and round)")
    parser.add_argument("--cases", nargs="+", choices=CASES, default=["floor", "gateway"])
    parser.add_argument("--rounds", type=int, default=5, help="time: processes per case")
    parser.add_argument("--stages", action="store_true", help="time: by stage too")
    parser.add_argument("--gateway", type=Path, help="serve the gateway package in DIR")
    args = parser.parse_args()
    if args.mode == "drive":
        drive(*args.drive, args.requests)
    elif args.mode == "count":
        count(args.cases, args.requests or 300, args.gateway)
    elif args.mode == "timeline":
        timeline(
            [c for c in args.cases if c in ("floor", "gateway")], args.requests or 100, args.gateway
        )
    else:
        time_cases(args.requests or 3000, args.rounds, args.stages, args.gateway)


if __name__ == "__main__":
    main()
