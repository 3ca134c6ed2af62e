"""Rollout parts without a server: plans, the checks' statistics, windows and routing per step."""

from dataclasses import replace
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError
from scipy import stats

from gateway.metrics import FINE, FINE_BUCKETS
from gateway.rollout.analysis import (
    Evidence,
    agreement,
    analyze,
    error_rate,
    latency,
    online_metric,
    output_drift,
    verdict,
)
from gateway.rollout.figures import baseline, quantile, window
from gateway.rollout.judge import count_latency_strikes, next_analysis
from gateway.rollout.plan import (
    AgreementCheck,
    Analysis,
    ErrorRateCheck,
    LatencyCheck,
    OnlineMetricCheck,
    OutputDriftCheck,
    RolloutPlan,
    Step,
    Webhook,
)
from gateway.rollout.record import Rollout
from gateway.routing import Canary, RoutingState, Shadow

CANARY = Step(canary=0.1)
SHADOW = Step(shadow=1.0)


def evidence(step: Step = CANARY, **figures: list[float]) -> Evidence:
    """Evidence of candidate `new` against live `old`; keyword names use `__` for `|`."""
    found = {key.replace("__", "|"): values for key, values in figures.items()}
    return Evidence(step, "old", "new", found, {}, {}, 0.25)


def histogram(seconds: float, count: int) -> list[float]:
    counts = [0.0] * FINE
    counts[int(np.searchsorted(FINE_BUCKETS, seconds))] = count
    return counts


# --- plans ------------------------------------------------------------------------------------


def test_durations_read_like_argo_and_a_step_does_exactly_one_thing() -> None:
    """ "10m" is 600 s; a step with two actions, none, or a bool weight is refused by name."""
    plan = RolloutPlan.model_validate(
        {"variant": "g", "steps": [{"shadow": 1, "duration": "10m"}, {"canary": 0.05}],
         "analysis": {"interval": "30s"}}
    )  # fmt: skip
    assert plan.steps[0].duration == 600.0 and plan.analysis.interval == 30.0
    for bad in ({"shadow": 1.0, "canary": 0.1}, {"duration": 5}, {"canary": True},
                {"canary": 1.5}, {"canary": 0.1, "duration": "soon"}, {"canary": 0.1, "x": 1}):  # fmt: skip
        with pytest.raises(ValidationError):
            Step.model_validate(bad)
    for bad in ({"canary": 0.0}, {"canary": 0.1, "duration": True}, {"canary": 0.1, "min_requests": "9"},
                {"canary": float("inf")}, {"canary": 0.1, "duration": float("inf")},
                {"canary": 0.1, "duration": "\uff15s"}, {"canary": 0.1, "duration": "10s\n"},
                {"canary": 0.1, "duration": "9" * 400 + "h"}, {"pause": 1}, {"pause": "yes"}):  # fmt: skip
        with pytest.raises(ValidationError):
            Step.model_validate(bad)
    for url in ("http://", "http://a b/x", "ftp://host", "http://host/\n"):
        with pytest.raises(ValidationError):
            Webhook.model_validate({"type": "event", "url": url})
    for analysis in ({"latency": {"max_p99_ratio": float("inf")}}, {"error_rate": {"alpha": "0.01"}},
                     {"output_drift": {"max_psi": float("inf")}}, {"latency": {"enabled": 0}}):  # fmt: skip
        with pytest.raises(ValidationError):
            Analysis.model_validate(analysis)
    with pytest.raises(ValidationError, match="at least one shadow or canary"):
        RolloutPlan.model_validate({"variant": "g", "steps": [{"pause": True}]})


def test_each_step_routes_from_the_base_and_the_end_states_are_promote_or_base() -> None:
    """Shadow steps mirror, canary steps split, a pause keeps the step before; Healthy makes
    the variant live, Degraded restores the routing from before the rollout."""
    base = RoutingState(live="old", shadows=(Shadow("other", 0.5),), revision=7)
    plan = RolloutPlan(variant="new", steps=(SHADOW, Step(canary=0.25), Step(pause=True)))
    record = Rollout.begin("m", plan, base)
    assert record.desired().shadows == (Shadow("other", 0.5), Shadow("new", 1.0))
    assert record.desired().canary is None
    for step in (1, 2):
        routed = replace(record, step=step)
        assert routed.desired().canary == Canary("new", 0.25)
        assert routed.desired().shadows == (Shadow("other", 0.5),)
    promoted = replace(record, phase="Healthy")
    assert promoted.desired().live == "new" and promoted.desired().canary is None
    degraded = replace(record, phase="Degraded", step=1)
    assert degraded.desired() == base


def test_a_record_survives_its_json_form() -> None:
    """What a restart reads back is what was written, decisions and plan included."""
    plan = RolloutPlan(variant="new", steps=(SHADOW,))
    record = Rollout.begin("m", plan, RoutingState(live="old")).decide("start", "go", [])
    assert Rollout.from_dict(record.to_dict()) == record


# --- the error-rate SPRT ------------------------------------------------------------------------


def _looks(rate: float, looks: int, per_look: int, rng: np.random.Generator) -> list[str]:
    """Verdicts at each look of a canary whose true error rate is `rate` (live: 0 errors)."""
    config = ErrorRateCheck(max_increase=0.01, alpha=0.01, beta=0.05)
    errors = np.cumsum(rng.binomial(per_look, rate, size=looks))
    found = []
    for i, k in enumerate(errors):
        n = per_look * (i + 1)
        check = error_rate(config, evidence(answers__new__canary=[n, float(k)],
                                            answers__old__live=[20 * n, 0.0]))  # fmt: skip
        found.append(check.verdict)
        if check.verdict != "inconclusive":
            break
    return found


def test_the_error_sprt_rarely_fails_a_good_canary_and_catches_a_bad_one_by_the_second_look() -> (
    None
):
    """Simulated canaries: one with live's error floor (0.1%) fails in at most alpha of runs
    (plus binomial slack); one failing 10% of 50 requests a look is caught by its second."""
    rng = np.random.default_rng(11)
    runs = 400
    good = [_looks(0.001, 30, 50, rng)[-1] for _ in range(runs)]
    # The SPRT's alpha bounds the false-failure chance; 5 sigmas of binomial noise on top.
    assert good.count("fail") <= stats.binom.ppf(1 - 3e-7, runs, 0.01)
    assert good.count("pass") >= runs * 0.9
    bad = [_looks(0.10, 30, 50, rng) for _ in range(runs)]
    late = sum(1 for found in bad if found[-1] != "fail" or len(found) > 2)
    # P(at most 2 errors in 100 requests at 10%) is 0.2%: a late catch is that rare.
    assert late <= stats.binom.ppf(1 - 3e-7, runs, stats.binom.cdf(2, 100, 0.10))


def test_no_canary_requests_is_inconclusive_not_a_pass() -> None:
    """Without the variant's requests there is nothing to pass."""
    check = error_rate(ErrorRateCheck(), evidence(answers__old__live=[1000, 0]))
    assert check.verdict == "inconclusive"


def test_in_a_shadow_step_errors_are_the_shadow_runs_that_failed() -> None:
    """Shadow runs (agree, disagree, errors) are the variant's requests in a shadow step."""
    check = error_rate(ErrorRateCheck(), evidence(SHADOW, shadow__new=[80, 0, 20],
                                                  answers__old__live=[1000, 0]))  # fmt: skip
    assert check.verdict == "fail" and check.figures["variant"] == {"requests": 100, "errors": 20}


# --- latency, agreement, drift, online metric ------------------------------------------------------


def test_quantiles_of_a_fine_histogram_are_within_its_bucket() -> None:
    """p50 of runs all near 1 ms lies in 1 ms' bucket (12% wide); an empty one has none."""
    counts = histogram(0.001, 100)
    assert 0.001 / 10**0.1 <= quantile(counts, 0.5) <= 0.001 * 10**0.1  # type: ignore[operator]
    assert quantile([0.0] * FINE, 0.5) is None


def test_three_times_slower_runs_fail_latency_and_equal_runs_pass() -> None:
    """The variant's p50 at 3x live's fails (limit 1.5x); the same runs pass; too few wait."""
    config = LatencyCheck(min_samples=100)
    slow = latency(config, evidence(runs__new=histogram(0.003, 200),
                                    runs__old=histogram(0.001, 2000)))  # fmt: skip
    assert slow.verdict == "fail" and "p50 3" in slow.message
    same = latency(
        config, evidence(runs__new=histogram(0.001, 200), runs__old=histogram(0.001, 2000))
    )
    assert same.verdict == "pass"
    few = latency(
        config, evidence(runs__new=histogram(0.003, 20), runs__old=histogram(0.001, 2000))
    )
    assert few.verdict == "inconclusive"


def test_a_latency_failure_counts_only_when_the_next_analysis_fails_too() -> None:
    """One slow window is a strike (inconclusive); two in a row roll back; a pass resets."""
    slow = latency(LatencyCheck(), evidence(runs__new=histogram(0.003, 200),
                                            runs__old=histogram(0.001, 2000)))  # fmt: skip
    first, strikes = count_latency_strikes([slow], 0)
    assert first[0].verdict == "inconclusive" and strikes == 1
    second, strikes = count_latency_strikes([slow], strikes)
    assert second[0].verdict == "fail" and strikes == 2
    fine = latency(LatencyCheck(), evidence(runs__new=histogram(0.001, 200),
                                            runs__old=histogram(0.001, 2000)))  # fmt: skip
    assert count_latency_strikes([fine], strikes)[1] == 0


def test_analyses_keep_their_cadence_when_a_tick_runs_one_late() -> None:
    """Interval 1 s, first due at 100: run late at 100.4, the next is still due at 101 (not
    101.4, which drifted a 2 s step to 3 s); after a long stall, one interval from now."""
    assert next_analysis(100.0, 1.0, now=100.4) == 101.0
    assert next_analysis(101.0, 1.0, now=101.45) == 102.0
    assert next_analysis(100.0, 1.0, now=107.3) == 108.3


@pytest.mark.parametrize(
    ("agree", "disagree", "expected"),
    [(99, 1, "pass"), (80, 20, "fail"), (93, 7, "inconclusive"), (10, 0, "inconclusive")],
)
def test_agreement_is_a_one_sided_binomial_test(agree: int, disagree: int, expected: str) -> None:
    """80% agreement over 100 is surely below 95%; 93% is not sure either way; 10 are too few."""
    check = agreement(AgreementCheck(min_rate=0.95, alpha=0.01, min_samples=100),
                      evidence(SHADOW, shadow__new=[agree, disagree, 0]))  # fmt: skip
    assert check.verdict == expected


def test_agreement_is_skipped_in_a_canary_step_without_shadow_answers() -> None:
    assert agreement(AgreementCheck(), evidence()).verdict == "skipped"


def test_output_drift_fails_only_when_the_variant_drifts_and_live_does_not() -> None:
    """PSI 0.4 against live's 0.05 fails; both drifting (the traffic moved) passes; none: skip."""
    config = OutputDriftCheck()

    def check(psi: dict[str, float | None]) -> str:
        return output_drift(config, Evidence(CANARY, "old", "new", {}, {}, psi, 0.25)).verdict

    assert check({"new": 0.4, "old": 0.05}) == "fail"
    assert check({"new": 0.4, "old": 0.5}) == "pass"
    assert check({"new": None, "old": 0.1}) == "skipped"


def _scores(new: dict[str, float], old: dict[str, float]) -> Evidence:
    return Evidence(CANARY, "old", "new", {}, {"new": new, "old": old}, {}, 0.25)


def test_online_accuracy_must_be_at_least_as_good_as_live() -> None:
    """60% against live's 90% over hundreds of rows fails (Fisher); 91% passes; no feedback
    skips; a small worse sample is inconclusive."""
    config = OnlineMetricCheck(min_samples=50)
    worse = online_metric(
        config, _scores({"rows": 300, "correct": 180}, {"rows": 3000, "correct": 2700})
    )
    assert worse.verdict == "fail" and worse.figures["p_value"] < 0.01
    better = online_metric(
        config, _scores({"rows": 300, "correct": 273}, {"rows": 3000, "correct": 2700})
    )
    assert better.verdict == "pass"
    close = online_metric(
        config, _scores({"rows": 60, "correct": 52}, {"rows": 3000, "correct": 2700})
    )
    assert close.verdict == "inconclusive"
    assert online_metric(config, _scores({}, {"rows": 10, "correct": 9})).verdict == "skipped"


def test_online_mae_uses_welchs_test_on_absolute_errors() -> None:
    """A regression variant with twice live's absolute error fails; the same error passes."""
    config = OnlineMetricCheck(min_samples=50)
    live = {"rows": 1000, "absolute_error": 1000.0, "squared_error": 1200.0}
    worse = {"rows": 500, "absolute_error": 1000.0, "squared_error": 2400.0}
    assert online_metric(config, _scores(worse, live)).verdict == "fail"
    assert online_metric(config, _scores(dict(live), live)).verdict == "pass"


def test_the_verdict_fails_on_any_failure_and_passes_only_when_nothing_is_open() -> None:
    """Every check of a healthy canary passes or is skipped: the step passes."""
    figures: dict[str, Any] = {
        "answers|new|canary": [500, 0], "answers|old|live": [5000, 0],
        "runs|new": histogram(0.001, 500), "runs|old": histogram(0.001, 5000),
    }  # fmt: skip
    checks = analyze(Analysis(), Evidence(CANARY, "old", "new", figures, {}, {}, 0.25))
    assert [c.name for c in checks] == [
        "error_rate", "latency", "agreement", "output_drift", "online_metric",
    ]  # fmt: skip
    assert verdict(checks) == "pass"
    figures["answers|new|canary"] = [500, 60]
    assert (
        verdict(analyze(Analysis(), Evidence(CANARY, "old", "new", figures, {}, {}, 0.25)))
        == "fail"
    )


# --- windows over processes -----------------------------------------------------------------


def test_a_window_sums_what_each_process_counted_since_the_step_began() -> None:
    """A process that restarted (new id) counts from zero; a dead one keeps its last counts."""
    start = {"a": {"answers|new|canary": [10, 1]}, "b": {"answers|new|canary": [5, 0]}}
    now = {
        "a": {"answers|new|canary": [30, 2]},  # +20, +1
        "b": {"answers|new|canary": [5, 0]},  # died: nothing more
        "c": {"answers|new|canary": [7, 0]},  # started after the step began
    }
    assert window(now, start) == {"answers|new|canary": [27, 1]}


def test_a_process_first_seen_after_the_step_began_counts_from_its_first_figures() -> None:
    """A worker that had not published when the step began (or whose figures Redis lost) is
    counted from what it shows first, not from zero: its older traffic is not the step's. A
    process started after the step began counts from zero."""
    started = "process|started"
    now = {
        "old": {started: [100.0], "answers|new|canary": [480, 0]},  # served before the step
        "new": {started: [250.0], "answers|new|canary": [7, 0]},  # started during the step
    }
    start = baseline(now, {}, since=200.0)
    assert set(start) == {"old"}
    assert window(now, start) == {"answers|new|canary": [7, 0]}
