"""New connections are accepted however busy the event loop is (gateway.http.accept)."""

import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from support import GatewayProcess, base_config, iris_body, make_slow_model, wait_until

pytestmark = pytest.mark.e2e

PROBES = 50  # new connections opened at once, as kubelets and Prometheus open them


def _live(port: int) -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: gateway\r\nConnection: close\r\n\r\n")
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return int(answer.split(b" ", 2)[1])


def test_probes_on_new_connections_are_answered_between_busy_loop_iterations(
    tmp_path: Path,
    model_repo: Path,
    write_config: Callable[..., Path],
    start_gateway: Callable[..., GatewayProcess],
) -> None:
    """Two callers keep the event loop busy with slow runs made on the loop itself (one run per
    loop iteration or more). 50 probes then open a connection each: all are answered while the
    callers get a few answers, not one connection accepted per iteration (libuv's own pace
    since 1.45), which would take 50 iterations and at least as many answers."""
    make_slow_model(model_repo / "iris" / "loop" / "model.onnx", rows=2000, layers=1)
    models = base_config(model_repo, tmp_path)["models"]
    models["iris"]["variants"]["loop"] = {"path": "iris/loop/model.onnx"}
    gateway = start_gateway(write_config(models=models, inline_run_below_s=60.0))
    url = f"{gateway.url}/v2/models/iris/versions/loop/infer"
    answered, stop, lock = [0], threading.Event(), threading.Lock()

    def caller() -> None:
        with httpx.Client(timeout=60) as client:
            while not stop.is_set():
                assert client.post(url, json=iris_body()).status_code == 200
                with lock:
                    answered[0] += 1

    callers = [threading.Thread(target=caller) for _ in range(2)]
    for thread in callers:
        thread.start()
    try:
        wait_until(lambda: answered[0] >= 4)  # the loop is busy: each answer takes a run
        before = answered[0]
        statuses: list[int] = []
        probes = [
            threading.Thread(target=lambda: statuses.append(_live(gateway.port)))
            for _ in range(PROBES)
        ]
        for probe in probes:
            probe.start()
        for probe in probes:
            probe.join(timeout=120)
        during = answered[0] - before
    finally:
        stop.set()
        for thread in callers:
            thread.join(timeout=120)
    assert statuses == [200] * PROBES
    assert during < PROBES // 2, f"{during} answers while {PROBES} probes waited to be accepted"


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.skipif(shutil.which("prlimit") is None, reason="needs util-linux's prlimit")
def test_out_of_file_descriptors_the_gateway_waits_and_recovers(
    write_config: Callable[..., Path],
    start_gateway: Callable[..., GatewayProcess],
) -> None:
    """With its file descriptors capped at 64 and 100 connections waiting, accepting fails
    (EMFILE): the gateway does not spin on the still-readable socket (little CPU, few log
    lines), and once the connections close it accepts and answers again."""
    gateway = start_gateway(write_config())
    pid = gateway.process.pid
    subprocess.run(["prlimit", f"--pid={pid}", "--nofile=64:64"], check=True)
    waiting = [socket.create_connection(("127.0.0.1", gateway.port)) for _ in range(100)]
    try:
        wait_until(lambda: "accepting a connection failed" in gateway.output())
        before = _cpu_seconds(pid)
        started = time.monotonic()
        time.sleep(2.0)  # the window the CPU time is measured over: two retry periods
        busy = (_cpu_seconds(pid) - before) / (time.monotonic() - started)
    finally:
        for sock in waiting:
            sock.close()
    assert busy < 0.5, f"the gateway used {busy:.0%} of a core while out of descriptors"
    assert gateway.output().count("accepting a connection failed") <= 5
    answer = wait_until(lambda: _live_or_none(gateway.port), timeout=30)
    assert answer == 200


def _live_or_none(port: int) -> int | None:
    try:
        return _live(port)
    except OSError:
        return None
