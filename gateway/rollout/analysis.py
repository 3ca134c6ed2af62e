"""The checks that judge a rollout step: the variant against live over the same window.

README "Rollouts". Each check answers `pass`, `fail`, `inconclusive` (not enough evidence yet)
or `skipped` (nothing to judge: no shadow comparisons in a canary step, no reference, no
feedback). The statistics are scipy's:

- error rate: Wald's sequential probability ratio test (Wald 1945, "Sequential tests of
  statistical hypotheses") of the variant's errors, H0 p = p0 against H1 p = p0 + max_increase,
  p0 being live's rate in the window (at least 0.1%). It is built for looking again at every
  analysis: its error chances (alpha, beta) hold over the whole sequence of looks.
- latency: p50 and p99 of model runs from fine histograms, as ratios to live's, once both
  have `min_samples` runs and, for each quantile, ten runs above it (p99: 1000 runs).
- agreement: a one-sided exact binomial test of the shadow's agreement rate against `min_rate`.
- output drift: the monitor's PSI of the variant's outputs against the reference.
- online metric: Fisher's exact test on accuracy, or Welch's t-test on absolute errors.
"""

import asyncio
import math
import sys
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from gateway.metrics import FINE
from gateway.rollout.figures import Figures, get, quantile
from gateway.rollout.plan import (
    AgreementCheck,
    Analysis,
    ErrorRateCheck,
    LatencyCheck,
    OnlineMetricCheck,
    OutputDriftCheck,
    Step,
)

Verdict = Literal["pass", "fail", "inconclusive", "skipped"]
MIN_ERROR_RATE = 0.001
# A quantile q is judged once TAIL_RUNS runs of each variant lie above it, n (1 - q) >= TAIL_RUNS:
# p99 from 1000 runs. Below that, the p99 of a few hundred runs is one or two outliers.
TAIL_RUNS = 10  # p0's floor: with no error on live, one on the variant is not infinite

Scores = dict[str, dict[str, float]]


def _stats() -> Any:
    """scipy.stats, imported when first needed: it adds about 70 MB to each worker, which a
    gateway that runs no rollout does not pay. `load_statistics` imports it beforehand."""
    from scipy import stats

    return stats


async def load_statistics() -> None:
    """Import scipy.stats on a thread, once, before an analysis needs it: imported by the first
    analysis on the event loop, it held every request for up to a second."""
    if "scipy.stats" not in sys.modules:
        await asyncio.to_thread(_stats)


@dataclass(frozen=True)
class Check:
    """One check's verdict, why, and the figures it was reached on."""

    name: str
    verdict: Verdict
    message: str
    figures: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "check": self.name,
            "verdict": self.verdict,
            "message": self.message,
            "figures": self.figures,
        }


@dataclass(frozen=True)
class Evidence:
    """What a step is judged on: the window's figures, feedback scores and monitor report."""

    step: Step
    live: str
    variant: str
    figures: Figures
    scores: Scores  # feedback score sums since the step began, by variant
    outputs_psi: dict[str, float | None]  # the monitor's largest output PSI, by variant
    psi_threshold: float


def analyze(analysis: Analysis, evidence: Evidence) -> list[Check]:
    """Every enabled check of `analysis` on `evidence`."""
    checks: list[Check] = []
    if analysis.error_rate.enabled:
        checks.append(error_rate(analysis.error_rate, evidence))
    if analysis.latency.enabled:
        checks.append(latency(analysis.latency, evidence))
    if analysis.agreement.enabled:
        checks.append(agreement(analysis.agreement, evidence))
    if analysis.output_drift.enabled:
        checks.append(output_drift(analysis.output_drift, evidence))
    if analysis.online_metric.enabled:
        checks.append(online_metric(analysis.online_metric, evidence))
    return checks


def error_rate(config: ErrorRateCheck, evidence: Evidence) -> Check:
    variant_n, variant_errors = _traffic(evidence, evidence.variant)
    live_n, live_errors = _traffic(evidence, evidence.live, live=True)
    figures: dict[str, Any] = {
        "variant": {"requests": variant_n, "errors": variant_errors},
        "live": {"requests": live_n, "errors": live_errors},
    }
    if variant_n == 0:
        return Check("error_rate", "inconclusive", "no requests of the variant yet", figures)
    p0 = min(max(live_errors / live_n if live_n else 0.0, MIN_ERROR_RATE), 0.5)
    p1 = min(p0 + config.max_increase, 0.999)
    ratio = float(
        _stats().binom.logpmf(variant_errors, variant_n, p1)
        - _stats().binom.logpmf(variant_errors, variant_n, p0)
    )
    upper, lower = (
        math.log((1 - config.beta) / config.alpha),
        math.log(config.beta / (1 - config.alpha)),
    )
    figures.update(log_likelihood_ratio=round(ratio, 3), bounds=[round(lower, 3), round(upper, 3)])
    rates = f"{variant_errors:g}/{variant_n:g} errors against live's {p0:.2%}"
    if ratio >= upper:
        return Check(
            "error_rate",
            "fail",
            f"{rates}: above live's by {config.max_increase:.2%} "
            f"or more (SPRT, alpha {config.alpha:g})",
            figures,
        )
    if ratio <= lower:
        return Check("error_rate", "pass", f"{rates}: no worse than live (SPRT)", figures)
    return Check("error_rate", "inconclusive", f"{rates}: not decided yet (SPRT)", figures)


def latency(config: LatencyCheck, evidence: Evidence) -> Check:
    if evidence.step.shadow is not None:
        key = f"shadow_runs|{evidence.variant}"
        variant_runs, live_runs = (
            get(evidence.figures, f"{key}|shadow", FINE),
            get(evidence.figures, f"{key}|live", FINE),
        )
    else:
        variant_runs = get(evidence.figures, f"runs|{evidence.variant}", FINE)
        live_runs = get(evidence.figures, f"runs|{evidence.live}", FINE)
    counts = (int(sum(variant_runs)), int(sum(live_runs)))
    figures: dict[str, Any] = {"variant_runs": counts[0], "live_runs": counts[1]}
    if min(counts) < config.min_samples:
        return Check(
            "latency",
            "inconclusive",
            f"{min(counts)} runs so far; judged from {config.min_samples}",
            figures,
        )
    failing = []
    for q, limit in ((0.5, config.max_p50_ratio), (0.99, config.max_p99_ratio)):
        name = f"p{round(q * 100)}"
        if min(counts) < TAIL_RUNS / (1 - q):
            figures[name] = f"judged from {TAIL_RUNS / (1 - q):.0f} runs of each"
            continue
        ours, theirs = quantile(variant_runs, q), quantile(live_runs, q)
        assert ours is not None and theirs is not None  # both have runs
        ratio = ours / theirs
        figures[name] = {"variant_s": ours, "live_s": theirs, "ratio": round(ratio, 3)}
        if ratio > limit:
            failing.append(f"{name} {ratio:.2f}x live's (limit {limit:g}x)")
    if failing:
        return Check("latency", "fail", "; ".join(failing), figures)
    return Check("latency", "pass", "within the limits", figures)


def agreement(config: AgreementCheck, evidence: Evidence) -> Check:
    """The shadow's agreement with live in a shadow step; skipped in other steps."""
    agree, disagree, _ = get(evidence.figures, f"shadow|{evidence.variant}", 3)
    n = int(agree + disagree)
    figures: dict[str, Any] = {"compared": n, "agree": int(agree)}
    if evidence.step.shadow is None:
        return Check("agreement", "skipped", "the variant is not a shadow in this step", figures)
    if n == 0:
        return Check("agreement", "inconclusive", "no shadow answers compared yet", figures)
    rate = agree / n
    p = float(_stats().binomtest(int(agree), n, config.min_rate, alternative="less").pvalue)
    figures.update(rate=round(rate, 4), p_value=p)
    if p < config.alpha:
        return Check(
            "agreement",
            "fail",
            f"agreement {rate:.1%} is below {config.min_rate:.0%} (binomial test, p={p:.2g})",
            figures,
        )
    if n >= config.min_samples and rate >= config.min_rate:
        return Check("agreement", "pass", f"agreement {rate:.1%} over {n} answers", figures)
    return Check("agreement", "inconclusive", f"agreement {rate:.1%} over {n} answers", figures)


def output_drift(config: OutputDriftCheck, evidence: Evidence) -> Check:
    limit = config.max_psi or evidence.psi_threshold
    ours = evidence.outputs_psi.get(evidence.variant)
    theirs = evidence.outputs_psi.get(evidence.live)
    figures = {"variant_psi": ours, "live_psi": theirs, "max_psi": limit}
    if ours is None:
        return Check("output_drift", "skipped", "no reference or too few rows", figures)
    if ours > limit and (theirs is None or theirs <= limit):
        return Check(
            "output_drift",
            "fail",
            f"outputs drifted: PSI {ours:.3f} above {limit:g} (live {theirs})",
            figures,
        )
    return Check("output_drift", "pass", f"output PSI {ours:.3f}", figures)


def online_metric(config: OnlineMetricCheck, evidence: Evidence) -> Check:
    ours, theirs = evidence.scores.get(evidence.variant, {}), evidence.scores.get(evidence.live, {})
    n, m = ours.get("rows", 0.0), theirs.get("rows", 0.0)
    figures: dict[str, Any] = {"variant_rows": int(n), "live_rows": int(m)}
    if n == 0 or m == 0:
        return Check("online_metric", "skipped", "no feedback on both variants", figures)
    if min(n, m) < config.min_samples:
        return Check(
            "online_metric",
            "inconclusive",
            f"{int(min(n, m))} rows with feedback; judged from {config.min_samples}",
            figures,
        )
    if "correct" in ours or "correct" in theirs:
        return _accuracy(config, ours, theirs, figures)
    return _mean_absolute_error(config, ours, theirs, figures)


def _accuracy(
    config: OnlineMetricCheck,
    ours: dict[str, float],
    theirs: dict[str, float],
    figures: dict[str, Any],
) -> Check:
    n, m = ours["rows"], theirs["rows"]
    right, their_right = ours.get("correct", 0.0), theirs.get("correct", 0.0)
    accuracy, live_accuracy = right / n, their_right / m
    figures.update(accuracy=round(accuracy, 4), live_accuracy=round(live_accuracy, 4))
    if accuracy >= live_accuracy - config.max_drop:
        return Check(
            "online_metric",
            "pass",
            f"accuracy {accuracy:.1%} against live's {live_accuracy:.1%}",
            figures,
        )
    table = np.array([[right, n - right], [their_right, m - their_right]], dtype=np.int64)
    p = float(_stats().fisher_exact(table, alternative="less").pvalue)
    figures["p_value"] = p
    verdict: Verdict = "fail" if p < config.alpha else "inconclusive"
    return Check(
        "online_metric",
        verdict,
        f"accuracy {accuracy:.1%} against live's "
        f"{live_accuracy:.1%} (Fisher's exact test, p={p:.2g})",
        figures,
    )


def _mean_absolute_error(
    config: OnlineMetricCheck,
    ours: dict[str, float],
    theirs: dict[str, float],
    figures: dict[str, Any],
) -> Check:
    (mae, sd, n), (live_mae, live_sd, m) = _absolute_errors(ours), _absolute_errors(theirs)
    figures.update(mae=mae, live_mae=live_mae)
    if mae <= live_mae + config.max_drop:
        return Check(
            "online_metric", "pass", f"MAE {mae:.4g} against live's {live_mae:.4g}", figures
        )
    p = float(
        _stats()
        .ttest_ind_from_stats(
            mae - config.max_drop,
            sd,
            n,
            live_mae,
            live_sd,
            m,
            equal_var=False,
            alternative="greater",
        )
        .pvalue
    )
    figures["p_value"] = p
    verdict: Verdict = "fail" if p < config.alpha else "inconclusive"
    return Check(
        "online_metric",
        verdict,
        f"MAE {mae:.4g} against live's {live_mae:.4g} (Welch's t-test, p={p:.2g})",
        figures,
    )


def _absolute_errors(scores: dict[str, float]) -> tuple[float, float, float]:
    """Mean and standard deviation of |error| from the sums feedback keeps, and the rows."""
    n = scores["rows"]
    mean = scores.get("absolute_error", 0.0) / n
    variance = (scores.get("squared_error", 0.0) - n * mean * mean) / max(n - 1, 1)
    return mean, math.sqrt(max(variance, 0.0)), n


def _traffic(evidence: Evidence, variant: str, live: bool = False) -> tuple[float, float]:
    """Requests and errors of `variant` in the window: live's as live; the candidate's as
    canary, or its shadow runs in a shadow step."""
    if not live and evidence.step.shadow is not None:
        agree, disagree, errors = get(evidence.figures, f"shadow|{variant}", 3)
        return agree + disagree + errors, errors
    role = "live" if live else "canary"
    answers, errors = get(evidence.figures, f"answers|{variant}|{role}", 2)
    return answers, errors


def requests_seen(evidence: Evidence) -> float:
    """The variant's requests (or shadow runs) in the window, for the step's minimum."""
    return _traffic(evidence, evidence.variant)[0]


def verdict(checks: list[Check]) -> Verdict:
    """fail if any fails; pass if every one passes or is skipped; else inconclusive."""
    found = {check.verdict for check in checks}
    if "fail" in found:
        return "fail"
    if "inconclusive" in found:
        return "inconclusive"
    return "pass"
