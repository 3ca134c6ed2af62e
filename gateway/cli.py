"""`gateway` command line: serve, and every admin operation (the README's admin API table)."""

import argparse
import copy
import functools
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gateway.admin_client import ADMIN_COMMANDS, run_admin_command
from gateway.batch.command import add_batch_command
from gateway.errors import ConfigError
from gateway.grpc import GrpcBinding, check_grpc_installed, check_grpc_port
from gateway.metrics import METRICS_DIR_ENV
from gateway.monitoring.reference_file import read_reference
from gateway.runtime import ModelRepository, load_repository
from gateway.settings import DEFAULT_CONFIG, Settings, load_settings
from gateway.streams.command import (
    add_consume_command,
    check_consumers_installed,
    run_consume_command,
)
from gateway.tracing import check_tracing_installed


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "serve":
        return serve(args)
    if args.command == "consume":
        return run_consume_command(args)
    if args.command == "batch":
        from gateway.batch.command import run_batch_command

        return run_batch_command(args)
    return run_admin_command(args)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gateway", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve_cmd = commands.add_parser("serve", help="serve the configured models over HTTP")
    env = os.environ.get
    serve_cmd.add_argument("--config", default=env("GATEWAY_CONFIG", DEFAULT_CONFIG))
    serve_cmd.add_argument("--host", default=env("GATEWAY_HOST", "127.0.0.1"))
    serve_cmd.add_argument("--port", type=int, default=int(env("GATEWAY_PORT", "8000")))
    serve_cmd.add_argument("--workers", type=int, default=int(env("GATEWAY_WORKERS", "1")))
    serve_cmd.add_argument("--log-level", default="info")
    for command in ADMIN_COMMANDS:
        command.add_to(commands)
    add_consume_command(commands)
    add_batch_command(commands)
    return parser


def serve(args: argparse.Namespace) -> int:
    """Check the config and the models, then run uvicorn (one process, or N workers)."""
    try:
        settings = load_settings(args.config)
        _check_workers(settings, args.workers)
        check_consumers_installed(settings, None)
        if settings.grpc_port is not None:
            check_grpc_installed()
            check_grpc_port(args.host, settings.grpc_port)
        if settings.otel_endpoint is not None:
            check_tracing_installed()
        repository = preload(settings, args.workers)
    except ConfigError as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 2
    import uvicorn

    from gateway.http import create_app
    from gateway.http.protocol import GatewayHttpProtocol

    options = {
        "host": args.host,
        "port": args.port,
        "log_level": args.log_level,
        "access_log": False,  # our own access log is in the app (settings.access_log)
        "server_header": False,  # no need to tell the world which server we run
        # uvicorn's X-Forwarded-* middleware rewrites the client address and scheme, which the
        # gateway never reads: without it a request skips a coroutine and a scan of its headers.
        "proxy_headers": False,
        # uvicorn's httptools protocol: writes batched when busy, request heads bounded. Made
        # with the limits by uvicorn in each worker (a partial survives the trip to workers).
        "http": functools.partial(
            GatewayHttpProtocol,
            max_header_line_bytes=settings.max_header_line_bytes,
            max_request_head_bytes=settings.max_request_head_bytes,
        ),
        # After SIGTERM's drain (gateway.http.drain), what requests in flight get to finish.
        "timeout_graceful_shutdown": settings.shutdown_timeout_s,
        "log_config": log_config(args.log_level),
    }
    if args.workers == 1:
        binding = GrpcBinding(args.host, share_port=False)
        uvicorn.run(create_app(settings, repository, grpc_binding=binding), **options)
        return 0
    # Workers are separate processes: they read the config path from the environment, and
    # share their metrics through files they map in memory, in a fresh directory per run
    # (gateway.metric_values). On tmpfs, when there is one: nothing is ever written back to a
    # disk, so a write on the request path can never wait for one.
    os.environ["GATEWAY_CONFIG"] = str(settings.config_path)
    os.environ["GATEWAY_HOST"] = args.host  # where their gRPC servers listen
    shm = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
    metrics_dir = tempfile.mkdtemp(prefix="gateway-metrics-", dir=shm)
    os.environ[METRICS_DIR_ENV] = metrics_dir
    try:
        uvicorn.run("gateway.http.app:app_from_env", factory=True, workers=args.workers, **options)
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)
    return 0


def _check_workers(settings: Settings, workers: int) -> None:
    if workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {workers}")
    if workers > 1 and settings.redis_url is None:
        raise ConfigError(
            f"{settings.config_path}: redis_url: --workers {workers} needs Redis to share routing "
            "and the shadow log between workers; set redis_url (or GATEWAY_REDIS_URL) or use "
            "--workers 1"
        )


def preload(settings: Settings, workers: int) -> ModelRepository | None:
    """Load every variant before serving, so a bad model stops start-up with a message.

    One process keeps what it loaded; with several workers each loads its own (they are
    separate processes), so this check's sessions are dropped.
    """
    repository = load_repository(settings)
    for name, model in settings.models.items():  # a reference file that cannot serve: say so now
        if model.monitoring.enabled and model.monitoring.reference is not None:
            live = repository.session(name, model.routing.live)
            try:
                read_reference(Path(model.monitoring.reference), live.inputs)
            except ConfigError as exc:
                raise ConfigError(f"models.{name}.monitoring.reference: {exc}") from None
    return repository if workers == 1 else None


def log_config(level: str) -> dict[str, Any]:
    """uvicorn's logging config, with the gateway's own loggers on its default handler."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["loggers"]["gateway"] = {"handlers": ["default"], "level": level.upper()}
    return config
