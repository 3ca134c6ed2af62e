"""The rollout scenario's PNG: the share of answers per variant over time, with its decisions.

Shares come from the answers' `x-gateway-variant` counts, per second; a dotted line shows the
share the routing gives the rolled-out variant, a dashed one its shadow sample (shadow runs
mirror requests, they never answer), and a vertical line marks each decision of the gateway.
"""

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display on a server or in CI

import matplotlib.pyplot as plt
from matplotlib.axes import Axes

from reporting.plot import COLOURS, MIN_ANSWERS

BIN_S = 1.0  # at least: the recorder's buckets are merged into bins this wide
LINE_STYLES = {"wait": (":", 0.8), "start": ("-", 1.2), "advance": ("-", 1.2)}
TROUBLE = ("rollback", "abort", "pause", "undo")  # decisions drawn in red


def plot_shares(record: dict[str, Any], title: str, path: Path) -> None:
    """One panel: stacked shares per variant, the planned share, decision lines."""
    rollout = record["rollout"]
    variant = rollout["plan"]["variant"]
    width = max(BIN_S, record.get("bucket_s", BIN_S))
    bins = share_bins(record["buckets"], width)
    start, end = (bins[0]["t"], bins[-1]["t"]) if bins else (0.0, 1.0)
    figure, axes = plt.subplots(figsize=(10, 5))
    _stack(axes, bins, variant)
    _planned(axes, rollout["decisions"], variant, end)
    for decision in rollout["decisions"]:
        _mark(axes, decision)
    axes.set_xlabel("seconds since start")
    axes.set_ylabel(f"share of answers per {width:g} s")
    axes.set_ylim(0, 1.05)  # room to see a shadow sample of 1 above the stack
    axes.set_xlim(start, end)
    axes.legend(loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=4, fontsize=8)
    axes.set_title(title, fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def share_bins(buckets: list[dict[str, Any]], width: float) -> list[dict[str, Any]]:
    """The recorder's buckets merged into `width`-second bins of shares per variant, each at
    its middle (a bin that straddles a decision then shows the change where it happened);
    bins with fewer than MIN_ANSWERS answers (the ramp-up, the stop) are left out."""
    counts: dict[int, dict[str, int]] = {}
    for bucket in buckets:
        merged = counts.setdefault(int(bucket["t"] / width + 1e-9), {})
        for name, n in bucket["variants"].items():
            merged[name] = merged.get(name, 0) + n
    bins = []
    for index, variants in sorted(counts.items()):
        total = sum(variants.values())
        if total >= MIN_ANSWERS:
            shares = {name: n / total for name, n in variants.items()}
            bins.append({"t": (index + 0.5) * width, "shares": shares, "answers": total})
    return bins


def _stack(axes: Axes, bins: list[dict[str, Any]], variant: str) -> None:
    # The rolled-out variant at the bottom, so its share reads as a height from zero.
    names = sorted({n for b in bins for n in b["shares"]}, key=lambda n: (n != variant, n))
    if not names:
        return
    t = [b["t"] for b in bins]
    stacks = [[b["shares"].get(name, 0.0) for b in bins] for name in names]
    colours = [COLOURS.get(name, "tab:gray") for name in names]
    labels = [f"answered by {name}" for name in names]
    axes.stackplot(t, *stacks, labels=labels, colors=colours, alpha=0.6)


def _planned(axes: Axes, decisions: list[dict[str, Any]], variant: str, end: float) -> None:
    """The share the routing gives the variant from each decision on, and its shadow sample
    where it has one."""
    if not decisions:
        return
    t = [0.0] + [d["at"] for d in decisions] + [max(end, decisions[-1]["at"])]
    shares = [0.0] + [_planned_share(d["state"], variant) for d in decisions]
    samples = [math.nan] + [d["shadow"] or math.nan for d in decisions]
    axes.step(t, [*shares, shares[-1]], ":", where="post", color="black",
              label=f"{variant}'s share by the routing")  # fmt: skip
    colour = COLOURS.get(variant, "black")
    axes.step(t, [*samples, samples[-1]], "--", where="post", color=colour, linewidth=2,
              label=f"{variant}'s shadow sample (mirrored, never answers)")  # fmt: skip
    for start, stop, sample in zip(t[1:], t[2:], samples[1:], strict=False):
        if not math.isnan(sample):
            axes.text((start + stop) / 2, 0.25, f"{variant} shadows {sample:.0%}\nof requests",
                      ha="center", va="center", fontsize=9)  # fmt: skip


def _planned_share(state: dict[str, Any], variant: str) -> float:
    canary = state.get("canary")
    if state["live"] == variant:
        return 1.0
    return float(canary["weight"]) if canary and canary["variant"] == variant else 0.0


def _mark(axes: Axes, decision: dict[str, Any]) -> None:
    """A vertical line at a decision, labelled with it and the routing it made."""
    name = decision["decision"]
    style, width = LINE_STYLES.get(name, ("-", 1.6))
    colour = "tab:red" if name in TROUBLE else "black"
    axes.axvline(decision["at"], color=colour, linestyle=style, linewidth=width)
    if name == "wait":
        return  # waits change nothing; their lines say enough
    axes.annotate(f"{name}: {decision['routing']}", (decision["at"], 0.5),
                  xycoords=("data", "axes fraction"), xytext=(-3, 0), textcoords="offset points",
                  rotation=90, ha="right", va="center", fontsize=8,
                  bbox={"boxstyle": "round,pad=0.2", "fc": "white", "ec": "none", "alpha": 0.8},
                  )  # fmt: skip
