"""`gateway consume`: the configured event-stream consumers, without the HTTP data plane.

The process loads the models, routing, shadow log and monitor as `gateway serve` does and runs
the consumers (those named with `--consumer`, else all); over HTTP it answers only
`/v2/health/live`, `/v2/health/ready` and `/metrics` (lag and message counts, for Prometheus).
SIGTERM or SIGINT stops it: the batches in hand are answered, written and acknowledged within
`shutdown_timeout_s`, and it exits 0.
"""

import argparse
import os
import sys
from collections.abc import Collection
from typing import Any

from gateway.errors import ConfigError
from gateway.settings import DEFAULT_CONFIG, Settings, load_settings
from gateway.streams.config import select_consumers


def add_consume_command(commands: Any) -> None:
    """Add `consume` to the CLI's subcommands (argparse's `add_subparsers` object)."""
    env = os.environ.get
    command = commands.add_parser(
        "consume", help="answer inference requests read from Redis Streams or Kafka"
    )
    command.add_argument("--config", default=env("GATEWAY_CONFIG", DEFAULT_CONFIG))
    command.add_argument(
        "--consumer", action="append", default=[], metavar="NAME",
        help="a consumer of the config's `consumers` to run (repeatable; default: all)",
    )  # fmt: skip
    command.add_argument("--host", default=env("GATEWAY_HOST", "127.0.0.1"))
    command.add_argument(
        "--port", type=int, default=int(env("GATEWAY_PORT", "8000")),
        help="port of health and /metrics",
    )  # fmt: skip
    command.add_argument("--log-level", default="info")


def check_consumers_installed(settings: Settings, names: Collection[str] | None) -> bool:
    """Whether any consumer is to run (`names` as `select_consumers` takes them); ConfigError
    when one needs an extra that is not installed (Kafka: confluent-kafka)."""
    selected = select_consumers(settings.consumers, names)
    if any(consumer.source == "kafka" for consumer in selected):
        from gateway.streams.kafka_source import kafka_module

        kafka_module()
    return bool(selected)


def run_consume_command(args: argparse.Namespace) -> int:
    """Check the config, the consumers and the models, then run them under uvicorn."""
    from gateway.cli import log_config, preload  # the same checks and logs as `serve`

    try:
        settings = load_settings(args.config)
        if not check_consumers_installed(settings, args.consumer):
            raise ConfigError(f"{settings.config_path}: consumers: none configured")
        repository = preload(settings, 1)
    except ConfigError as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 2
    import uvicorn

    from gateway.http import create_app

    options: dict[str, Any] = {
        "host": args.host,
        "port": args.port,
        "log_level": args.log_level,
        "access_log": False,
        "server_header": False,
        "timeout_graceful_shutdown": settings.shutdown_timeout_s,
        "log_config": log_config(args.log_level),
    }
    uvicorn.run(create_app(settings, repository, consumers=args.consumer), **options)
    return 0
