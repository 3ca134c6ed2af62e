"""The counts a rollout's analysis reads, per process, and their sum over a step's window.

Every process (worker or replica) takes its own counts of a model from its metrics: answers and
errors by variant and role, fine model-run histograms, shadow outcomes and shadow run times.
They are cumulative, so they only grow; the judge adds up every process's counts and subtracts
each process's counts at the step's start. A process that started after it (a restart) counts
from zero; one that died keeps its last published counts. So the sum is exact and monotone,
without a Prometheus server (README "Rollouts").

A process's figures are a flat mapping `"kind|variant|detail" -> [values]`:
`answers|V|ROLE` -> [answers, errors]; `runs|V` -> fine histogram of model runs;
`shadow|V` -> [agree, disagree, errors]; `shadow_runs|V|shadow` and `shadow_runs|V|live` ->
fine histograms of shadow runs and of the live runs they mirrored; `process|started` -> [when
the process started].
"""

import time
from collections.abc import Iterator, Mapping

import numpy as np

from gateway.metrics import FINE_BUCKETS, Family, Metrics, fine_runs

Figures = dict[str, list[float]]
ROLES = ("live", "canary")
STARTED = "process|started"  # [unix seconds]: not a count
PROCESS_STARTED = time.time()  # this process's (the module is imported once, at start-up)


def own_figures(metrics: Metrics, model: str) -> Figures:
    """This process's cumulative figures of `model` (its own slots, not the other workers'),
    with when the process started (`STARTED`)."""
    figures: Figures = {STARTED: [PROCESS_STARTED]}
    for key, values in _entries(metrics, model):
        known = figures.setdefault(key, [0.0] * len(values))
        for i, value in enumerate(values):
            known[i] += value
    return figures


def _entries(metrics: Metrics, model: str) -> Iterator[tuple[str, list[float]]]:
    for (variant, role, code), (count, _) in _mine(metrics.requests, model):
        if role in ROLES:
            yield f"answers|{variant}|{role}", [count, count if int(code) >= 500 else 0.0]
    for (variant, role), (count, *_) in _mine(metrics.model_failures, model):
        if role in ROLES:
            yield f"answers|{variant}|{role}", [0.0, count]
    for (variant,), values in _mine(metrics.inference_duration, model):
        yield f"runs|{variant}", list(fine_runs(values))
    for (variant, agree), (count, *_) in _mine(metrics.shadow_comparisons, model):
        yield f"shadow|{variant}", [count, 0.0, 0.0] if agree == "true" else [0.0, count, 0.0]
    for (variant, outcome), (count, *_) in _mine(metrics.shadow_records, model):
        if outcome == "error":
            yield f"shadow|{variant}", [0.0, 0.0, count]
    for (variant, side), values in _mine(metrics.shadow_latency, model):
        yield f"shadow_runs|{variant}|{side}", values


def _mine(family: Family, model: str) -> Iterator[tuple[tuple[str, ...], list[float]]]:
    """This process's series of `model` in `family`: the other labels and the values."""
    for labels, values in family.mine().items():
        if labels[0] == model:
            yield labels[1:], values


def baseline(
    now: Mapping[str, Figures], start: Mapping[str, Figures], since: float
) -> dict[str, Figures]:
    """`start` with the processes it lacks that started before `since`: those had not
    published yet (or Redis lost their figures) when the step began, so what they counted
    before their first figures seen now is not the step's. Processes started later count
    from zero."""
    found = dict(start)
    for process, figures in now.items():
        if process not in found and figures.get(STARTED, [since])[0] < since:
            found[process] = figures
    return found


def window(now: Mapping[str, Figures], start: Mapping[str, Figures]) -> Figures:
    """The sum over processes of what each counted since `start` (process id -> figures)."""
    total: Figures = {}
    for process, figures in now.items():
        before = start.get(process, {})
        for key, values in figures.items():
            if key == STARTED:
                continue
            old = before.get(key, [])
            known = total.setdefault(key, [0.0] * len(values))
            for i, value in enumerate(values):
                known[i] += value - (old[i] if i < len(old) else 0.0)
    return total


def quantile(counts: list[float] | np.ndarray, q: float) -> float | None:
    """The `q` quantile (seconds) of a fine histogram, interpolated geometrically inside its
    bucket as Prometheus' histogram_quantile does linearly; None when it is empty."""
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum()
    if total <= 0:
        return None
    cumulative = np.cumsum(counts)
    i = int(np.searchsorted(cumulative, q * total))
    if i >= len(FINE_BUCKETS):  # the +Inf bucket: its lower bound is all that is known
        return FINE_BUCKETS[-1]
    upper = FINE_BUCKETS[i]
    lower = FINE_BUCKETS[i - 1] if i > 0 else upper / 10**0.1
    below = cumulative[i - 1] if i > 0 else 0.0
    share = (q * total - below) / counts[i] if counts[i] else 1.0
    return float(lower * (upper / lower) ** float(share))


def get(figures: Figures, key: str, width: int) -> list[float]:
    """`figures[key]`, or zeros."""
    return figures.get(key) or [0.0] * width
