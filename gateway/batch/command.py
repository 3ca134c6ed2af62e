"""`gateway batch MODEL --input FILE --output FILE`: the command line of offline inference
(README "Batch inference").

Exit codes: 0 when the output file is written; 2 for a problem found before any row runs (the
config, an unknown model or variant, the input's columns or types, a checkpoint of another job),
as `gateway serve` exits for a bad config; 1 when a chunk fails while running (the checkpoint
keeps the finished chunks: run the same command again to resume); 130 on Ctrl-C.
"""

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from gateway.errors import ConfigError, GatewayError
from gateway.settings import DEFAULT_CONFIG


def add_batch_command(commands: "argparse._SubParsersAction[Any]") -> None:
    """The `batch` subcommand and its options."""
    batch = commands.add_parser(
        "batch",
        help="predict every row of a Parquet, CSV or JSON-lines file into another file",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    batch.add_argument("model", help="the model, as named in the config")
    batch.add_argument("--input", required=True, type=Path, help=".parquet, .csv or .jsonl")
    batch.add_argument("--output", required=True, type=Path, help="its format from its name")
    default_config = os.environ.get("GATEWAY_CONFIG", DEFAULT_CONFIG)
    batch.add_argument("--config", type=Path, default=Path(default_config), help="as serve's")
    batch.add_argument("--variant", help="send every row to this variant (default: routed)")
    batch.add_argument("--id-column", default="id", help="the rows' ids (default: %(default)s)")
    batch.add_argument(
        "--columns", type=_names, help="feature columns, comma-separated (default: all others)"
    )
    batch.add_argument("--chunk-rows", type=int, default=10_000, help="rows per checkpoint")
    batch.add_argument("--batch-rows", type=int, default=1024, help="rows per model run")
    batch.add_argument(
        "--engine", choices=("local", "ray"), default="local", help="ray: a Ray Data job"
    )
    batch.add_argument("--workers", type=int, default=1, help="Ray actors (--engine ray)")
    batch.add_argument("--pushgateway", help="push the metrics to this Pushgateway at the end")


def run_batch_command(args: argparse.Namespace) -> int:
    """Run the job the arguments describe; the exit code (module docstring)."""
    # Imported here: `gateway serve` and the admin commands need none of pyarrow and rich.
    from gateway.batch.engine import run_batch
    from gateway.batch.plan import BatchJob
    from gateway.batch.predict import BatchFailed

    job = BatchJob(
        args.config, args.model, args.input, args.output, args.variant, args.id_column,
        args.columns, args.chunk_rows, args.batch_rows, args.pushgateway,
    )  # fmt: skip
    try:
        rows = run_batch(job, args.engine, args.workers)
    except ConfigError as exc:
        print(f"gateway batch: {exc}", file=sys.stderr)
        return 2
    except (BatchFailed, GatewayError, OSError) as exc:
        message = exc.message if isinstance(exc, GatewayError) else str(exc)
        print(f"gateway batch: {message} (run the same command again to resume)", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("gateway batch: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    print(f"gateway batch: {rows} rows of {args.model} written to {args.output}", file=sys.stderr)
    return 0


def _names(text: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    if not names:
        raise argparse.ArgumentTypeError("name at least one column")
    return names
