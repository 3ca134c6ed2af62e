"""A throwaway `gateway serve` for one load-test run: temp config, free port, stopped by PID."""

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "gateway.yaml"
READY_TIMEOUT_S = 60.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_config(source: Path, folder: Path) -> Path:
    """`source` with an absolute model repository and data_dir inside `folder`."""
    config: dict[str, Any] = yaml.safe_load(source.read_text())
    # Relative paths resolve against the config's folder, which is now a temp dir.
    config["model_repository"] = str((source.parent / config["model_repository"]).resolve())
    config["data_dir"] = str(folder / "data")
    path = folder / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


class LocalGateway:
    """Context manager: start the gateway, wait until ready, stop it (and its workers) at exit."""

    def __init__(self, token: str, log: Path, source: Path = CONFIG) -> None:
        self._token = token
        self._log = log
        self._source = source
        self.url = ""
        self._folder: tempfile.TemporaryDirectory[str] | None = None
        self._process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> "LocalGateway":
        self._folder = tempfile.TemporaryDirectory(prefix="gateway-load-")
        config = write_config(self._source, Path(self._folder.name))
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        command = [sys.executable, "-m", "gateway", "serve", "--config", str(config),
                   "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
        with self._log.open("wb") as log:
            self._process = subprocess.Popen(
                command, env={**os.environ, "GATEWAY_ADMIN_TOKEN": self._token},
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        try:
            self._wait_ready()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not self._ready():
            if self._process is not None and self._process.poll() is not None:
                raise RuntimeError(f"gateway exited early; see {self._log}")
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"gateway not ready after {READY_TIMEOUT_S:g} s; see {self._log}"
                )
            time.sleep(0.1)

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/v2/health/ready", timeout=2) as answer:
                return bool(answer.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._process is not None and self._process.poll() is None:
            # Its own session: the signal reaches the gateway and any worker it started. SIGINT
            # stops at once; SIGTERM would drain first (README "Graceful shutdown").
            os.killpg(self._process.pid, signal.SIGINT)
            try:
                self._process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self._process.pid, signal.SIGKILL)
                self._process.wait()
        if self._folder is not None:
            self._folder.cleanup()
