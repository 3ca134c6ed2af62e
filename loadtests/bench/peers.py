"""Benchmark the gateway against KServe's and MLServer's Python model servers, in the same run.

    python loadtests/bench/peers.py [--rounds 3] [--duration 5] [--concurrency 1 32]

Each peer runs in its own venv under `.bench-peers/`, made from its pinned requirements file in
`peers/` and reused while that file is unchanged. Each serves `models/mlp/1/model.onnx` as its
users would: KServe with a custom `kserve.Model`, MLServer with a custom `MLModel` runtime, both
running onnxruntime with one intra-op thread in a single server process. The floor (`floor.py`),
the gateway (live only), KServe and MLServer are measured one after another with wrk, round after
round, as in `run.py` (server on core 0, wrk on core 1); before it is measured, each peer's answer
to the benchmark body must be the gateway's prediction. Each figure is the median over rounds of
its ratio to the floor of the same round; the gateway's requests/s is divided by each peer's of
the same round (issue 12's target: at least 5x). Writes docs/peers.md.

Other scripts call `run_peers(...)` and `render_tables(...)` or `render_report(...)`.
"""

import argparse
import contextlib
import functools
import hashlib
import importlib.metadata
import json
import math
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import run as bench

PEERS_DIR = bench.HERE / "peers"
MODEL = bench.ROOT / "models" / "mlp" / "1" / "model.onnx"
CACHE = bench.ROOT / ".bench-peers"
INFER_PATH, READY_PATH = "/v2/models/mlp/infer", "/v2/models/mlp/ready"
FLOOR, GATEWAY = "floor", "gateway (live only)"
TARGET = 5.0  # issue 12: the gateway's requests/s at least 5x each peer's
# Packages whose pinned versions the report lists for each peer.
SHOWN = [
    "onnxruntime",
    "numpy",
    "fastapi",
    "starlette",
    "uvicorn",
    "uvloop",
    "httptools",
    "pydantic",
]

Log = Callable[[str], None]
Launch = Callable[[Path, Path, int], tuple[list[str], dict[str, str]]]
Server = Callable[[], AbstractContextManager[tuple[str, int]]]  # entered: (url, pid)


def say(text: str) -> None:
    print(text, flush=True)


# --- the peers --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Peer:
    """A model server to measure: its pinned requirements and how to start it."""

    name: str
    package: str  # the pinned package that is the server
    requirements: Path
    # (venv python, a fresh work folder, HTTP port) -> command and extra environment
    launch: Launch


def kserve_launch(python: Path, workdir: Path, port: int) -> tuple[list[str], dict[str, str]]:
    """`kserve_server.py` with one uvicorn worker; KServe's latency log line per request off."""
    command = [
        str(python),
        str(PEERS_DIR / "kserve_server.py"),
        *("--model_name", "mlp", "--model_path", str(MODEL)),
        *("--http_port", str(port), "--grpc_port", str(bench.free_port())),
        *("--workers", "1", "--enable_latency_logging", "false"),
    ]
    return command, {}


def mlserver_launch(python: Path, workdir: Path, port: int) -> tuple[list[str], dict[str, str]]:
    """`mlserver start` on a folder with the server's and the model's settings."""
    settings = {
        # MLServer's default (debug: true) writes an access log line per request; the gateway
        # writes none by default.
        "debug": False,
        # The default (1) runs inference in a second process fed through a queue; 0 runs it in
        # the server process, one process like every other server here.
        "parallel_workers": 0,
        "host": "127.0.0.1",
        "http_port": port,
        "grpc_port": bench.free_port(),
        "metrics_port": bench.free_port(),
    }
    model = {
        "name": "mlp",
        "implementation": "mlserver_runtime.OnnxRuntime",
        "parameters": {"uri": str(MODEL)},
    }
    (workdir / "settings.json").write_text(json.dumps(settings))
    (workdir / "mlp").mkdir()
    (workdir / "mlp" / "model-settings.json").write_text(json.dumps(model))
    return [str(python.parent / "mlserver"), "start", str(workdir)], {"PYTHONPATH": str(PEERS_DIR)}


PEERS = [
    Peer("KServe", "kserve", PEERS_DIR / "kserve.txt", kserve_launch),
    Peer("MLServer", "mlserver", PEERS_DIR / "mlserver.txt", mlserver_launch),
]


# --- venvs ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Venv:
    """A peer's venv, as made or found in the cache."""

    peer: str
    python: Path
    pins: dict[str, str]  # every package of the requirements file -> its version
    install_s: float  # how long making it took, when it was made
    size_bytes: int
    reused: bool


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_pins(requirements: Path) -> dict[str, str]:
    """The `name==version` lines of a requirements file; any other requirement is refused."""
    pins = {}
    for raw in requirements.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        name, pinned, version = line.partition("==")
        if not pinned or not version.strip():
            raise SystemExit(f"{requirements}: {line!r} is not pinned with ==")
        pins[normalized(name.strip())] = version.strip()
    return pins


def fingerprint(requirements: Path) -> str:
    """What a venv was made from: the requirements file and the Python that made it."""
    digest = hashlib.sha256(requirements.read_bytes())
    digest.update(sys.version.encode())
    return digest.hexdigest()


def tree_size(path: Path) -> int:
    return sum(entry.lstat().st_size for entry in path.rglob("*") if not entry.is_dir())


def prepare_venv(peer: Peer, cache: Path, log: Log = say) -> Venv:
    """The peer's venv in `cache`: reused if it was made from the same requirements file,
    else made anew (pip)."""
    path = cache / peer.name.lower()
    python, marker = path / "bin" / "python", path / "bench-peer.json"
    wanted = fingerprint(peer.requirements)
    record = json.loads(marker.read_text()) if marker.exists() else {}
    reused = record.get("fingerprint") == wanted and python.exists()
    if not reused:
        record = make_venv(path, peer.requirements, log)
        record["fingerprint"] = wanted
        marker.write_text(json.dumps(record))  # last: an interrupted install is not reused
    pins = read_pins(peer.requirements)
    return Venv(peer.name, python, pins, record["install_s"], tree_size(path), reused)


def make_venv(path: Path, requirements: Path, log: Log) -> dict[str, float | str]:
    log(f"making {path} from {requirements.relative_to(bench.ROOT)} (pip install)")
    started = time.monotonic()
    shutil.rmtree(path, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
    pip = [str(path / "bin" / "python"), "-m", "pip", "install", "-q", "--no-input"]
    subprocess.run([*pip, "-r", str(requirements)], check=True)
    install_s = round(time.monotonic() - started, 1)
    log(f"made {path} in {install_s:.0f} s")
    return {"install_s": install_s, "made": time.strftime("%Y-%m-%d")}


# --- servers ----------------------------------------------------------------------------------


class PeerDown(Exception):
    """A peer exited or did not get ready; the message ends with its log."""


@contextlib.contextmanager
def peer_server(peer: Peer, venv: Venv, directory: Path) -> Iterator[tuple[str, int]]:
    """The peer serving the model on core 0, its output in a log file; yields (url, pid)."""
    port = bench.free_port()
    workdir = Path(tempfile.mkdtemp(dir=directory))
    command, extra_env = peer.launch(venv.python, workdir, port)
    log_path = workdir / "server.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            bench.pinned(bench.SERVER_CORE, command),
            cwd=workdir,
            env={**os.environ, **extra_env},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        try:
            bench.wait_ready(f"http://127.0.0.1:{port}{READY_PATH}", process)
        except SystemExit as exc:  # how bench.wait_ready gives up
            raise PeerDown(f"{exc}; its log ends:\n{tail(log_path)}") from None
        yield f"http://127.0.0.1:{port}", process.pid
    finally:
        stop(process)


def tail(path: Path, lines: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def stop(process: subprocess.Popen[bytes]) -> None:
    """The server's whole process group: SIGINT (the gateway stops at once; SIGTERM would drain
    first), then SIGKILL after 30 s."""
    with contextlib.suppress(ProcessLookupError):  # it may have exited by itself
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
    process.wait()


# --- answers ----------------------------------------------------------------------------------


def body() -> bytes:
    return (bench.HERE / "body.json").read_bytes()


def check_body_fits_model() -> None:
    """The benchmark body (and infer.lua's, the same) names the model's input with its width."""
    session = ort.InferenceSession(str(MODEL), providers=["CPUExecutionProvider"])
    model_input = session.get_inputs()[0]
    tensor = json.loads(body())["inputs"][0]
    if tensor["name"] != model_input.name or tensor["shape"][1:] != model_input.shape[1:]:
        raise SystemExit(
            f"body.json sends {tensor['name']} {tensor['shape']}, the model takes "
            f"{model_input.name} {model_input.shape}"
        )


def prediction(url: str) -> np.ndarray:
    """The scores a server answers to the benchmark body, sent as wrk sends it."""
    answer = httpx.post(
        url + INFER_PATH,
        content=body(),
        headers={"Content-Type": "application/json"},
        timeout=10,
    )
    if answer.status_code != 200:
        raise ValueError(f"answered {answer.status_code}: {answer.text[:300]}")
    output = answer.json()["outputs"][0]
    return np.asarray(output["data"], dtype=np.float32).reshape(output["shape"])


def differs(expected: np.ndarray, got: np.ndarray) -> str | None:
    """Why `got` is not the prediction `expected` is (None when it is)."""
    if got.shape != expected.shape:
        return f"answered shape {list(got.shape)} where the gateway answered {list(expected.shape)}"
    if not np.array_equal(got.argmax(-1), expected.argmax(-1)) or not np.allclose(
        got, expected, rtol=1e-5, atol=1e-6
    ):
        ours, theirs = got.ravel()[:3].tolist(), expected.ravel()[:3].tolist()
        return f"answered scores {ours}... where the gateway answered {theirs}..."
    return None


# --- measuring --------------------------------------------------------------------------------


@dataclass
class PeerResults:
    """Samples by (server, concurrency) and round; peers left out, and why; the venvs used."""

    rounds: int
    duration: int
    concurrencies: list[int]
    venvs: list[Venv]
    samples: dict[tuple[str, int], dict[int, bench.Sample]] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    reference: np.ndarray | None = None  # the gateway's answer to the benchmark body

    @property
    def servers(self) -> list[str]:
        return [FLOOR, GATEWAY, *(venv.peer for venv in self.venvs)]

    def add(self, server: str, concurrency: int, round_number: int, sample: bench.Sample) -> None:
        self.samples.setdefault((server, concurrency), {})[round_number] = sample


def measure_answered(url: str, pid: int, concurrency: int, seconds: int) -> bench.Sample:
    """bench.measure, counting only answered requests: a non-2xx answer is an error and adds
    nothing to the requests/s or the CPU it is divided by."""
    bench.wrk(url, concurrency, 1)  # warm-up at the same load
    before = bench.cpu_seconds(pid)
    requests, errors, duration, p50, p99 = bench.wrk(url, concurrency, seconds)
    cpu = bench.cpu_seconds(pid) - before
    answered = max(requests - errors, 0)
    return bench.Sample(answered / duration, p50, p99, cpu / max(answered, 1) * 1e6, errors)


def servers(results: PeerResults, directory: Path) -> list[tuple[str, Server]]:
    """The servers of one round, in order: floor, gateway, then each peer not left out."""
    floor, gateway = bench.Case("floor"), bench.Case("gateway: live only", {"live": "v1"})
    peers = {peer.name: peer for peer in PEERS}
    return [
        (FLOOR, functools.partial(bench.server, floor, directory, None)),
        (GATEWAY, functools.partial(bench.server, gateway, directory, None)),
        *(
            (venv.peer, functools.partial(peer_server, peers[venv.peer], venv, directory))
            for venv in results.venvs
            if venv.peer not in results.failures
        ),
    ]


def check_answer(results: PeerResults, name: str, url: str) -> str | None:
    """Why `name` must not be measured (None when its answer is the gateway's prediction)."""
    if name == FLOOR:
        return None
    try:
        got = prediction(url)
    except (ValueError, KeyError, TypeError, httpx.HTTPError) as exc:
        if name == GATEWAY:
            raise SystemExit(f"the gateway's answer to the benchmark body: {exc}") from exc
        return str(exc)
    if name == GATEWAY:
        results.reference = got
        return None
    assert results.reference is not None
    return differs(results.reference, got)


def measure_server(
    results: PeerResults, round_number: int, name: str, server: Server, log: Log
) -> None:
    """Check the server's answer, then measure it at each concurrency; a peer that does not
    start or answers wrong is left out of this round and the next ones."""
    try:
        with server() as (url, pid):
            reason = check_answer(results, name, url)
            if reason is None:
                measure_loads(results, round_number, name, url, pid, log)
                return
            reason = f"to the benchmark body it {reason}"
    except PeerDown as exc:
        reason = f"it did not start: {exc}"
    results.failures[name] = f"not measured from round {round_number} on: {reason}"
    log(f"round {round_number} {name}: {results.failures[name]}")


def measure_loads(
    results: PeerResults, round_number: int, name: str, url: str, pid: int, log: Log
) -> None:
    for concurrency in results.concurrencies:
        sample = measure_answered(url, pid, concurrency, results.duration)
        results.add(name, concurrency, round_number, sample)
        log(
            f"round {round_number} {name:20s} c={concurrency:<3d} {sample.rps:8.0f} req/s  "
            f"p50 {sample.p50_ms:7.3f} ms  p99 {sample.p99_ms:7.3f} ms  "
            f"cpu {sample.cpu_us:5.0f} us/req  errors {sample.errors}"
        )


def run_peers(
    rounds: int = 3,
    duration: int = 5,
    concurrencies: list[int] | None = None,
    cache: Path = CACHE,
    log: Log = say,
) -> PeerResults:
    """Make (or reuse) the peers' venvs, then measure floor, gateway and peers, round after
    round. Needs wrk and taskset; run it alone on the machine (`flock` where it is shared)."""
    check_body_fits_model()
    venvs = [prepare_venv(peer, cache, log) for peer in PEERS]
    results = PeerResults(rounds, duration, list(concurrencies or [1, 32]), venvs)
    with tempfile.TemporaryDirectory() as temp:
        for round_number in range(1, rounds + 1):
            for name, server in servers(results, Path(temp)):
                measure_server(results, round_number, name, server, log)
    return results


# --- the report -------------------------------------------------------------------------------


def ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else math.inf


def median_ratio(
    results: PeerResults, server: str, base: str, concurrency: int, figure: str
) -> float | None:
    """Median over the rounds that measured both of (server's figure / base's figure)."""
    ours = results.samples.get((server, concurrency), {})
    theirs = results.samples.get((base, concurrency), {})
    rounds = sorted(ours.keys() & theirs.keys())
    if not rounds:
        return None
    return statistics.median(
        ratio(getattr(ours[r], figure), getattr(theirs[r], figure)) for r in rounds
    )


def number(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def server_rows(results: PeerResults, concurrency: int) -> list[str]:
    rows = []
    for name in results.servers:
        runs = list(results.samples.get((name, concurrency), {}).values())
        if not runs:
            continue
        med = {
            f: statistics.median(getattr(s, f) for s in runs)
            for f in ("rps", "p50_ms", "p99_ms", "cpu_us")
        }
        to_floor = [
            number(median_ratio(results, name, FLOOR, concurrency, f), 2)
            for f in ("rps", "p50_ms", "p99_ms", "cpu_us")
        ]
        rows.append(
            f"| {name} | {concurrency} | {med['rps']:.0f} | {med['p50_ms']:.3f} | "
            f"{med['p99_ms']:.3f} | {med['cpu_us']:.0f} | {' | '.join(to_floor)} | "
            f"{sum(s.errors for s in runs)} |"
        )
    return rows


def peer_rows(results: PeerResults, concurrency: int) -> list[str]:
    rows = []
    for venv in results.venvs:
        speedup = median_ratio(results, GATEWAY, venv.peer, concurrency, "rps")
        if speedup is None:
            continue
        p50 = median_ratio(results, venv.peer, GATEWAY, concurrency, "p50_ms")
        p99 = median_ratio(results, venv.peer, GATEWAY, concurrency, "p99_ms")
        verdict = "yes" if speedup >= TARGET else "no"
        rows.append(
            f"| {venv.peer} | {concurrency} | {number(speedup, 2)} | {number(p50, 2)} | "
            f"{number(p99, 2)} | {verdict} |"
        )
    return rows


def render_tables(results: PeerResults) -> str:
    """Every server against the floor, then the gateway against each peer (markdown)."""
    lines = [
        "| server | c | req/s | p50 ms | p99 ms | CPU µs/req | req/s ÷ floor | p50 ÷ floor "
        "| p99 ÷ floor | CPU ÷ floor | errors |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for concurrency in results.concurrencies:
        lines += server_rows(results, concurrency)
    lines += [
        "",
        f"| peer | c | gateway req/s ÷ peer's | peer p50 ÷ gateway's | peer p99 ÷ gateway's "
        f"| gateway >= {TARGET:g}x |",
        "| --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for concurrency in results.concurrencies:
        lines += peer_rows(results, concurrency)
    lines += [f"\n{name}: {reason}" for name, reason in results.failures.items()]
    return "\n".join(lines)


def summary(results: PeerResults) -> str:
    """One line per peer: the gateway's requests/s over the peer's, and the target's verdict."""
    lines, verdicts = [], []
    for venv in results.venvs:
        found = [
            (concurrency, median_ratio(results, GATEWAY, venv.peer, concurrency, "rps"))
            for concurrency in results.concurrencies
        ]
        measured = [(c, r) for c, r in found if r is not None]
        if measured:
            times = " and ".join(f"{r:.2f}x (c={c})" for c, r in measured)
            lines.append(f"- the gateway's requests/s were {times} {venv.peer}'s")
            verdicts += [r >= TARGET for _, r in measured]
    if not verdicts:
        return "No peer was measured."
    met = "every" if all(verdicts) else "no" if not any(verdicts) else "some but not every"
    return "\n".join([*lines, f"\nIssue 12's target ({TARGET:g}x) is met in {met} case."])


def versions(results: PeerResults) -> str:
    """The pinned versions of each peer's server and stack, and the gateway's own stack."""
    peers = {peer.name: peer for peer in PEERS}
    lines = []
    for venv in results.venvs:
        shown = [peers[venv.peer].package, *SHOWN]
        pins = ", ".join(f"{name} {venv.pins[name]}" for name in shown if name in venv.pins)
        lines.append(
            f"- {venv.peer} (`{peers[venv.peer].requirements.relative_to(bench.ROOT)}`): {pins}"
        )
    ours = ", ".join(
        f"{name} {importlib.metadata.version(name)}"
        for name in ["model-gateway", *SHOWN]
        if name not in ("fastapi", "pydantic") and installed(name)
    )
    lines.append(f"- gateway and floor (the project's venv): {ours}")
    return "\n".join(lines)


def installed(name: str) -> bool:
    try:
        importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def venv_sizes(results: PeerResults) -> str:
    return "\n".join(
        f"- {venv.peer}: {venv.size_bytes / 2**20:.0f} MiB, made in {venv.install_s:.0f} s"
        f"{' (reused by this run)' if venv.reused else ''}"
        for venv in results.venvs
    )


def render_report(results: PeerResults, command: str) -> str:
    """docs/peers.md: how it was measured, the tables, the versions pinned."""
    return (
        (PEERS_DIR / "report.md.in")
        .read_text()
        .format(
            command=command,
            machine=bench.machine(),
            date=time.strftime("%Y-%m-%d"),
            rounds=results.rounds,
            duration=results.duration,
            summary=summary(results),
            tables=render_tables(results),
            versions=versions(results),
            venvs=venv_sizes(results),
            target=f"{TARGET:g}",
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=5, help="seconds per measurement")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--cache", type=Path, default=CACHE, help="where the peers' venvs live")
    parser.add_argument("--out", type=Path, default=bench.ROOT / "docs" / "peers.md")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: apt-get install wrk")
    results = run_peers(args.rounds, args.duration, args.concurrency, args.cache)
    print(render_tables(results))
    command = " ".join(["python loadtests/bench/peers.py", *sys.argv[1:]])
    args.out.write_text(render_report(results, command))


if __name__ == "__main__":
    main()
