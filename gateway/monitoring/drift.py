"""Drift statistics of a live profile against the reference (README "Monitoring").

- PSI, the population stability index, over the reference's quantile bins: the sum over bins of
  (live share - reference share) * ln(live share / reference share), which is the symmetric
  Kullback-Leibler divergence, computed with scipy.special.rel_entr. Shares are floored at
  `PSI_FLOOR` so an empty bin gives a large, finite value. Usual reading: below 0.1 stable,
  0.1 to 0.25 a moderate shift, above 0.25 a significant one (the default alert threshold).
- Wasserstein distance (earth mover's), scipy.stats.wasserstein_distance on the binned
  distributions, each bin at the mean of its values, divided by the reference's standard
  deviation: 1.0 means the mass moved by one reference standard deviation on average.
- Missing ratio (NaN values) and out-of-range ratio (beyond the reference's minimum or maximum,
  infinities included), over the rows of the window.

A statistic needs at least `MIN_ROWS` finite live values in the window, counted while the
reference existed; below that it is None (not exported), so a variant that has barely served
shows no drift. The out-of-range ratio is over the rows counted while the reference existed.
"""

import math
from typing import Any

import numpy as np

from gateway.monitoring.profiles import ClassReference, Counts, NumericReference

PSI_FLOOR = 1e-4
MIN_ROWS = 50


def psi(reference: np.ndarray, live: np.ndarray) -> float:
    """PSI of two distributions over the same bins (counts or shares)."""
    # scipy is imported where it is used: it adds about 70 MB to each worker, which a gateway
    # that never compares with a reference does not pay (README "Monitoring").
    from scipy.special import rel_entr

    p = np.maximum(live / max(live.sum(), 1e-300), PSI_FLOOR)
    q = np.maximum(reference / max(reference.sum(), 1e-300), PSI_FLOOR)
    return float(np.sum(rel_entr(p, q) + rel_entr(q, p)))


def numeric_statistics(
    counts: Counts, j: int, reference: NumericReference | None
) -> dict[str, float | None]:
    """Feature `j` of `counts`: mean, spread, missing and out-of-range ratios, PSI, Wasserstein."""
    rows, finite = counts.rows[j], counts.finite[j]
    mean = counts.total[j] / finite if finite else None
    std = None
    if mean is not None:
        std = math.sqrt(max(counts.squares[j] / finite - mean * mean, 0.0))
    found: dict[str, float | None] = {
        "mean": mean,
        "std": std,
        "missing_ratio": counts.missing[j] / rows if rows else None,
        "out_of_range_ratio": None,
        "psi": None,
        "wasserstein": None,
    }
    referenced = counts.referenced[j]
    if reference is None or not referenced:
        return found
    found["out_of_range_ratio"] = counts.out_of_range[j] / referenced
    width = len(reference.edges) + 1
    live = counts.bin_counts[j, :width]
    if live.sum() < MIN_ROWS:  # rows counted before the reference existed have no bins
        return found
    found["psi"] = psi(np.asarray(reference.shares), live)
    live_means = np.divide(counts.bin_sums[j, :width], live, out=np.zeros(width), where=live > 0)
    from scipy.stats import wasserstein_distance  # as in psi: only when there is a reference

    distance = wasserstein_distance(reference.means, live_means, reference.shares, live)
    found["wasserstein"] = distance / reference.std if reference.std > 0 else distance
    return found


def class_statistics(counts: dict[int, float], reference: ClassReference | None) -> dict[str, Any]:
    """A class output's shares in the window, and its PSI against the reference's classes
    (classes the reference never saw count together as one more bin)."""
    total = sum(counts.values())
    shares = {str(label): count / total for label, count in sorted(counts.items())} if total else {}
    found: dict[str, Any] = {"rows": total, "shares": shares, "psi": None}
    if reference is None or total < MIN_ROWS:
        return found
    known = set(reference.classes)
    live = [counts.get(label, 0.0) for label in reference.classes]
    live.append(sum(count for label, count in counts.items() if label not in known))
    found["psi"] = psi(np.asarray([*reference.shares, 0.0]), np.asarray(live))
    return found
