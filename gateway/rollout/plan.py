"""A rollout plan: the variant to ship, its steps, the analysis that judges them, its webhooks.

README "Rollouts". The shape follows Argo Rollouts' canary strategy (`steps`, `pause`,
`duration`, an analysis `interval`, `inconclusiveLimit`) and Flagger's webhook types; the
statistics are described in `gateway.rollout.analysis`. Durations are seconds, or a number with
a unit as in Argo: `30s`, `10m`, `1h`.
"""

import re
from typing import Annotated, Literal, Self

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION = re.compile(r"([0-9]{1,9}(?:\.[0-9]{1,9})?) ?(ms|s|m|h)?")
MAX_SECONDS = 366 * 86_400.0  # a year: longer is a typo


def _seconds(value: object) -> object:
    """`90`, `90.0`, `"90s"`, `"1.5m"` -> 90.0; anything else is left for pydantic to refuse."""
    if isinstance(value, str):
        match = _DURATION.fullmatch(value)
        if match is None:
            raise ValueError(f"{value!r} is not a duration such as 30s, 10m or 1h")
        return float(match[1]) * _UNITS[match[2] or "s"]
    return value


# Strict types (README "Admin": a bool or a string is never a number) and finite numbers.
Seconds = Annotated[float, BeforeValidator(_seconds), Field(ge=0, le=MAX_SECONDS)]
Fraction = Annotated[float, Field(ge=0.0, le=1.0)]
Share = Annotated[float, Field(gt=0.0, le=1.0)]
Probability = Annotated[float, Field(gt=0.0, lt=0.5)]
Ratio = Annotated[float, Field(gt=1.0, le=1000.0)]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, allow_inf_nan=False)


class Step(_Frozen):
    """One step: mirror (`shadow`) or send (`canary`) a share of traffic to the variant and
    judge it, or `pause` until an operator resumes. A step lasts at least `duration` and sees
    at least `min_requests` requests (or shadow runs) of the variant before it can pass."""

    shadow: Share | None = Field(default=None, description="Shadow sample of the variant.")
    canary: Share | None = Field(default=None, description="Canary weight of the variant.")
    pause: bool = Field(default=False, description="Wait for `gateway rollout resume`.")
    duration: Seconds = Field(default=60.0, description="The step's minimum duration.")
    min_requests: int = Field(
        default=100, ge=0, le=10**9, description="The variant's requests at least."
    )

    @model_validator(mode="after")
    def _one_action(self) -> Self:
        chosen = [self.shadow is not None, self.canary is not None, self.pause]
        if sum(chosen) != 1:
            raise ValueError("a step has exactly one of shadow, canary or pause")
        return self

    def describe(self) -> str:
        if self.pause:
            return "pause"
        if self.shadow is not None:
            return f"shadow {self.shadow:g}"
        return f"canary {self.canary:g}"


class ErrorRateCheck(_Frozen):
    """The variant's error rate (5xx, timeouts, runs the model refused) against live's: Wald's
    sequential probability ratio test of p = live's rate against p = live's rate + max_increase."""

    enabled: bool = True
    max_increase: Probability = Field(default=0.01, description="Tolerated rise of the rate.")
    alpha: Probability = Field(default=0.01, description="Chance of failing a good variant.")
    beta: Probability = Field(default=0.05, description="Chance of passing a bad variant.")


class LatencyCheck(_Frozen):
    """The variant's model-run p50 and p99 against live's over the step, as ratios."""

    enabled: bool = True
    max_p50_ratio: Ratio = 1.5
    max_p99_ratio: Ratio = 2.0
    min_samples: int = Field(default=100, ge=10, le=10**9, description="Runs of each first.")


class AgreementCheck(_Frozen):
    """Shadow answers that agree with live's (shadow steps): a one-sided binomial test."""

    enabled: bool = True
    min_rate: Fraction = 0.95
    alpha: Probability = 0.01
    min_samples: int = Field(default=100, ge=1, le=10**9)


class OutputDriftCheck(_Frozen):
    """The variant's output drift from the model's reference (README "Monitoring"): fails when
    its PSI exceeds `max_psi` while live's does not. Skipped without a reference."""

    enabled: bool = True
    max_psi: float | None = Field(
        default=None, gt=0, description="Default: the model's monitoring.psi_threshold."
    )


class OnlineMetricCheck(_Frozen):
    """The online metric from feedback (README "Monitoring") must be at least as good as live's:
    accuracy by Fisher's exact test, MAE by Welch's t-test on absolute errors."""

    enabled: bool = True
    max_drop: float = Field(default=0.0, ge=0, description="Tolerated loss (accuracy or MAE).")
    alpha: Probability = 0.01
    min_samples: int = Field(default=50, ge=1, le=10**9, description="Rows with feedback.")


class Analysis(_Frozen):
    """How each step is judged, every `interval`, on the figures since the step began."""

    interval: Seconds = Field(
        default=30.0, gt=0, description="Time between two analyses (at least the judge's 0.5 s)."
    )
    inconclusive_limit: int = Field(
        default=3,
        ge=0,
        le=10**6,
        description="Inconclusive analyses after the step's minimum before "
        "the rollout pauses for an operator (Argo's inconclusiveLimit).",
    )
    error_rate: ErrorRateCheck = ErrorRateCheck()
    latency: LatencyCheck = LatencyCheck()
    agreement: AgreementCheck = AgreementCheck()
    output_drift: OutputDriftCheck = OutputDriftCheck()
    online_metric: OnlineMetricCheck = OnlineMetricCheck()


HookType = Literal["confirm-traffic-increase", "confirm-promotion", "rollback", "event"]


class Webhook(_Frozen):
    """A URL called with the rollout's state (Flagger's webhook types): the confirm gates wait
    until it answers 2xx; `rollback` rolls back when it answers 2xx; `event` is told of
    every decision."""

    type: HookType
    url: str = Field(pattern=r"^https?://[^\s/?#]+(?:[/?#]\S*)?$", max_length=2048)
    timeout: Annotated[float, BeforeValidator(_seconds), Field(gt=0, le=60)] = 5.0


class RolloutPlan(_Frozen):
    """Ship `variant` through `steps`; after the last one passes, it becomes live."""

    variant: str = Field(max_length=128, description="The variant to ship (the candidate).")
    steps: tuple[Step, ...] = Field(min_length=1, strict=False)  # JSON gives a list
    analysis: Analysis = Analysis()
    webhooks: tuple[Webhook, ...] = Field(default=(), strict=False)

    @model_validator(mode="after")
    def _traffic_before_pause(self) -> Self:
        if all(step.pause for step in self.steps):
            raise ValueError("steps: a plan needs at least one shadow or canary step")
        return self
