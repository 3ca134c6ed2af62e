"""Benchmark: `gateway batch` on the heavy model against a plain onnxruntime loop over the same
file, in the same run, alternating (README "Batch inference"; docs/benchmarks-batch.md).

    flock /tmp/gateway-bench.lock python loadtests/bench/batch_bench.py [--rows 100000]

Both read the same Parquet file of `--rows` rows (an id and 512 FP32 features, fixed seed) in
chunks of `--chunk-rows` and write a Parquet file of the id and the model's 512 outputs (a
fixed-size list). The plain loop (`batch_bench.py plain`) is what a user would write without the
gateway: pyarrow's batches, `np.column_stack`, one `InferenceSession.run` per chunk with
onnxruntime's default options (a thread per core), one `ParquetWriter`. `gateway batch` runs the
heavy model as configured for serving (monitoring on, and off; no routing beyond live), with its
checkpoint. Each is timed end to end as a command (Python's start-up included), and on a
one-row file of the same width to tell start-up from throughput. Prints a JSON summary: medians,
and medians of each round's ratio to the plain loop (above 1: faster than the plain loop).
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ROOT / "models" / "heavy" / "1" / "model.onnx"
FEATURES = 512


def make_input(path: Path, rows: int, seed: int = 7) -> None:
    """`rows` rows of an id and FEATURES FP32 columns `f0`... in row groups of 10,000."""
    rng = np.random.default_rng(seed)
    with pq.ParquetWriter(path, _input_schema()) as writer:
        for start in range(0, rows, 10_000):
            count = min(10_000, rows - start)
            values = rng.standard_normal((count, FEATURES), dtype=np.float32)
            ids = pa.array(np.arange(start, start + count, dtype=np.int64))
            writer.write_table(pa.table([ids, *values.T], schema=_input_schema()))


def _input_schema() -> pa.Schema:
    return pa.schema([("id", pa.int64()), *((f"f{i}", pa.float32()) for i in range(FEATURES))])


def write_config(directory: Path, monitoring: bool) -> Path:
    config = {
        "model_repository": str(HEAVY.parents[1]),
        "data_dir": str(directory / "data"),
        "models": {
            "heavy": {
                "variants": {"v1": {"path": "1/model.onnx"}},
                "routing": {"live": "v1"},
                "monitoring": {"enabled": monitoring},
            }
        },
    }
    path = directory / f"gateway-{'on' if monitoring else 'off'}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def plain(source: Path, output: Path, chunk_rows: int) -> None:
    """The plain onnxruntime loop (the module says what it does)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(HEAVY), providers=["CPUExecutionProvider"])
    name, out = session.get_inputs()[0].name, session.get_outputs()[0].name
    file = pq.ParquetFile(source)
    writer = None
    for batch in file.iter_batches(batch_size=chunk_rows):
        features = np.column_stack([column.to_numpy() for column in batch.columns[1:]])
        (scores,) = session.run([out], {name: features.astype(np.float32, copy=False)})
        flat = pa.array(scores.reshape(-1))
        table = pa.table(
            {"id": batch.column(0), out: pa.FixedSizeListArray.from_arrays(flat, scores.shape[1])}
        )
        writer = writer or pq.ParquetWriter(output, table.schema)
        writer.write_table(table)
    if writer is not None:
        writer.close()


def timed(command: list[str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode:
        raise SystemExit(f"{' '.join(command)} exited {done.returncode}: {done.stderr[-2000:]}")
    return time.perf_counter() - started


def command(config: Path | None, source: Path, output: Path, chunk_rows: int) -> list[str]:
    """The plain loop (config None) or `gateway batch` with `config`, as a command line."""
    files = ["--input", str(source), "--output", str(output), "--chunk-rows", str(chunk_rows)]
    if config is None:
        return [sys.executable, __file__, "plain", *files]
    return [sys.executable, "-m", "gateway", "batch", "heavy", "--config", str(config), *files]


def bench(rows: int, chunk_rows: int, rounds: int, directory: Path) -> dict[str, object]:
    """Each case once per round, in turn, on the big file and on a one-row file."""
    big, tiny = directory / "input.parquet", directory / "one-row.parquet"
    make_input(big, rows)
    make_input(tiny, 1)
    output = directory / "output.parquet"
    cases = {
        "plain": None,
        "gateway": write_config(directory, monitoring=True),
        "gateway, monitoring off": write_config(directory, monitoring=False),
    }
    walls: dict[str, list[float]] = {name: [] for name in cases}
    starts: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(rounds):
        for name, config in cases.items():
            walls[name].append(timed(command(config, big, output, chunk_rows)))
            starts[name].append(timed(command(config, tiny, output, chunk_rows)))
    return summary(rows, walls, starts)


def summary(
    rows: int, walls: dict[str, list[float]], starts: dict[str, list[float]]
) -> dict[str, object]:
    """Medians of each case, and of its per-round ratios to the plain loop of the same round
    (the machine's load moves between rounds more than between neighbouring runs)."""
    found: dict[str, object] = {"rows": rows, "walls_s": walls, "starts_s": starts}
    for name in walls:
        wall, start = statistics.median(walls[name]), statistics.median(starts[name])
        after = [w - s for w, s in zip(walls[name], starts[name], strict=True)]
        plain_after = [w - s for w, s in zip(walls["plain"], starts["plain"], strict=True)]
        found[name] = {
            "wall_s": round(wall, 3),
            "start_s": round(start, 3),
            "rows_per_s": round(rows / wall),
            "rows_per_s_after_start": round(rows / statistics.median(after)),
            "ratio": round(statistics.median(map(_ratio, walls["plain"], walls[name])), 3),
            "ratio_after_start": round(statistics.median(map(_ratio, plain_after, after)), 3),
        }
    return found


def _ratio(plain_s: float, case_s: float) -> float:
    """Throughput of the case over the plain loop's: the inverse ratio of their times."""
    return plain_s / case_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("mode", nargs="?", choices=("bench", "plain"), default="bench")
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--chunk-rows", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--input", type=Path)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    if args.mode == "plain":
        plain(args.input, args.output, args.chunk_rows)
        return
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="batch-bench-") as directory:
        figures = bench(args.rows, args.chunk_rows, args.rounds, Path(directory))
    figures["machine"] = {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "load_average_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }
    print(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
