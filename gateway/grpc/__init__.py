"""The Open Inference Protocol v2 over gRPC (README "gRPC"): KServe's
`inference.GRPCInferenceService`, served by grpcio's asyncio server beside the HTTP app, in the
same process and event loop, through the same InferenceService.

Importing this package needs no grpcio: `gateway.grpc.server` does (the `grpc` extra).
"""

import importlib.util
import socket
from typing import NamedTuple

from gateway.errors import ConfigError

DEFAULT_HOST = "127.0.0.1"  # as `gateway serve --host`


class GrpcBinding(NamedTuple):
    """Where the gRPC server listens, besides `grpc_port`: the host `gateway serve` binds, and
    whether the port is shared by the workers of `--workers N` (SO_REUSEPORT: the kernel spreads
    new connections over them; a single process refuses a port already taken)."""

    host: str = DEFAULT_HOST
    share_port: bool = False


def check_grpc_installed() -> None:
    """ConfigError when `grpc_port` is set but grpcio and protobuf are not installed."""
    try:
        found = all(importlib.util.find_spec(name) for name in ("grpc", "google.protobuf"))
    except ModuleNotFoundError:  # no `google` package at all
        found = False
    if not found:
        raise ConfigError(
            "grpc_port: serving gRPC needs grpcio and protobuf; pip install 'model-gateway[grpc]'"
        )


def check_grpc_port(host: str, port: int) -> None:
    """ConfigError when another process listens on `host`:`port` already, found before the
    server starts: in the lifespan the same failure is a traceback and uvicorn's exit code 3."""
    try:
        socket.create_server((host, port)).close()  # SO_REUSEADDR: a TIME_WAIT is no clash
    except OSError as exc:
        raise ConfigError(f"grpc_port: cannot listen on {host}:{port}: {exc.strerror}") from None
