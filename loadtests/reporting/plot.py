"""The run's PNG: latency percentiles and requests/s per answering variant over the run."""

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display on a server or in CI

import matplotlib.pyplot as plt
from matplotlib.axes import Axes

MIN_ANSWERS = 20
COLOURS = {"blue": "tab:blue", "green": "tab:green", "mlp": "tab:purple", "none": "tab:red"}


def plot_run(record: dict[str, Any], title: str, path: Path) -> None:
    """Two panels sharing the time axis; dashed lines mark each routing change."""
    buckets, width = _closed(record["buckets"], record.get("bucket_s", 1.0))
    figure, (latency, throughput) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    _latency_panel(latency, buckets, width)
    _throughput_panel(throughput, buckets, width)
    for axes in (latency, throughput):
        _mark_phases(axes, record["phases"], label=axes is throughput)
    throughput.set_xlabel("seconds since start")
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def _closed(buckets: list[dict[str, Any]], width: float) -> tuple[list[dict[str, Any]], float]:
    # Steps are drawn from each bucket's start: repeat the last one at its end so it shows too.
    if not buckets:
        return [], width
    return [*buckets, {**buckets[-1], "t": buckets[-1]["t"] + width}], width


def _latency_panel(axes: Axes, buckets: list[dict[str, Any]], width: float) -> None:
    t = [b["t"] for b in buckets]
    for key, style in (("p50", "-"), ("p95", "--"), ("p99", ":")):
        values = [_percentile_or_gap(b, key) for b in buckets]
        axes.step(t, values, style, where="post", label=key, color="black")
    axes.set_ylabel(f"latency (ms) per {width:g} s")
    axes.set_ylim(bottom=0)
    axes.grid(alpha=0.3)
    axes.legend(loc="upper left")


def _percentile_or_gap(bucket: dict[str, Any], key: str) -> float:
    # A bucket with a handful of answers (the stop at the end) has no meaningful p99: leave a gap.
    return float(bucket[key]) if sum(bucket["variants"].values()) >= MIN_ANSWERS else math.nan


def _throughput_panel(axes: Axes, buckets: list[dict[str, Any]], width: float) -> None:
    t = [b["t"] for b in buckets]
    variants = sorted({v for b in buckets for v in b["variants"]})
    stacks = [[b["variants"].get(v, 0) / width for b in buckets] for v in variants]
    if variants:
        colours = [COLOURS.get(v, "tab:gray") for v in variants]
        axes.stackplot(t, *stacks, labels=variants, colors=colours, alpha=0.8, step="post")
    failures = [b["failures"] / width for b in buckets]
    if any(failures):
        axes.step(t, failures, where="post", color="tab:red", label="failed")
    axes.set_ylabel("requests/s by answering variant")
    axes.grid(alpha=0.3)
    axes.legend(loc="upper left")


def _mark_phases(axes: Axes, phases: list[dict[str, Any]], label: bool) -> None:
    for phase in phases[1:]:  # the first is the state found at the start
        axes.axvline(phase["at"], color="gray", linestyle="--", linewidth=1)
        if label:
            axes.annotate(phase["name"], (phase["at"], 1.0), xycoords=("data", "axes fraction"),
                          xytext=(3, -12), textcoords="offset points", fontsize=8)  # fmt: skip
