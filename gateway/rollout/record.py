"""The durable record of one model's rollout: its plan, where it is, and every decision.

README "Rollouts". The phases are Argo Rollouts': `Progressing` (steps are being walked),
`Paused` (waiting for an operator), `Healthy` (promoted: the variant is live) and `Degraded`
(rolled back or aborted; `message` says why). The record is what a restart resumes from: the
step, when it began, the figures at its start (the window's baseline) and the decisions made.
"""

import time
import uuid
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal, Self

from gateway.rollout.figures import Figures
from gateway.rollout.plan import RolloutPlan, Step
from gateway.routing import Canary, RoutingState, Shadow

Phase = Literal["Progressing", "Paused", "Healthy", "Degraded"]
ACTIVE = ("Progressing", "Paused")
# The judge's decisions, then the operator's verbs (`gateway_rollout_decisions_total`).
DECISIONS = (
    "start", "advance", "wait", "pause", "rollback", "promote",
    "abort", "resume", "skip", "undo",
)  # fmt: skip


@dataclass(frozen=True)
class Decision:
    """One decision: its number in the rollout, the step it judged, and the analysis."""

    number: int
    time: float
    step: int
    decision: str  # one of DECISIONS
    reason: str
    checks: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class Rollout:
    """A model's rollout; `version` grows with every write (the store's compare-and-set)."""

    id: str
    model: str
    plan: RolloutPlan
    base: RoutingState  # the routing before the rollout began: what a rollback restores
    phase: Phase = "Progressing"
    step: int = 0
    step_started: float = 0.0
    next_analysis: float = 0.0
    inconclusive: int = 0
    latency_strikes: int = 0  # analyses in a row whose latency check failed
    baseline: dict[str, Figures] = field(default_factory=dict)  # process id -> figures
    baseline_scores: dict[str, dict[str, float]] = field(default_factory=dict)
    decisions: tuple[Decision, ...] = ()
    applied: int = 0  # the last decision whose routing is in the history
    applied_revision: int = 0  # the routing revision that decision made
    message: str = ""
    earlier_variants: tuple[str, ...] = ()  # rolled out before this one, on this model
    hands_off: bool = False  # ended by someone else's routing change, which it leaves as is
    started: float = 0.0
    version: int = 0

    @classmethod
    def begin(cls, model: str, plan: RolloutPlan, base: RoutingState) -> Self:
        now = time.time()
        return cls(
            id=uuid.uuid4().hex[:12],
            model=model,
            plan=plan,
            base=base,
            started=now,
            step_started=now,
            next_analysis=now + plan.analysis.interval,
            applied_revision=base.revision,
            # A plan may open with a human gate.
            phase="Paused" if plan.steps[0].pause else "Progressing",
            message="paused at step 1: resume to go on" if plan.steps[0].pause else "",
        )

    @property
    def active(self) -> bool:
        return self.phase in ACTIVE

    def variants(self) -> tuple[str, ...]:
        """Every variant rolled out on this model: earlier ones and this one."""
        return tuple(dict.fromkeys((*self.earlier_variants, self.plan.variant)))

    @property
    def current_step(self) -> Step | None:
        return self.plan.steps[self.step] if self.step < len(self.plan.steps) else None

    def decide(
        self, decision: str, reason: str, checks: list[dict[str, Any]], **changes: Any
    ) -> Self:
        """This rollout with one more decision (and the changes it makes)."""
        made = Decision(
            len(self.decisions) + 1, round(time.time(), 3), self.step, decision, reason, checks
        )
        return replace(self, decisions=(*self.decisions, made), **changes)

    def desired(self) -> RoutingState | None:
        """The routing the record asks for (any revision number): the base routing with the
        latest traffic step up to the current one; promoted: the variant live; Degraded: the
        base routing; None when the routing is left to whoever changed it (`hands_off`)."""
        if self.hands_off:
            return None
        variant, base = self.plan.variant, self.base
        others = tuple(s for s in base.shadows if s.variant != variant)
        if self.phase == "Healthy":
            return replace(base, live=variant, canary=None, shadows=others)
        if self.phase == "Degraded":
            return base
        for step in reversed(self.plan.steps[: self.step + 1]):
            if step.shadow is not None:
                return replace(base, shadows=(*others, Shadow(variant, step.shadow)))
            if step.canary is not None:
                return replace(base, canary=Canary(variant, step.canary), shadows=others)
        return base

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["plan"] = self.plan.model_dump(mode="json")
        data["base"] = self.base.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        data = dict(data)
        data["plan"] = RolloutPlan.model_validate(data["plan"])
        data["base"] = RoutingState.from_dict(data["base"])
        data["decisions"] = tuple(Decision(**d) for d in data["decisions"])
        data["earlier_variants"] = tuple(data.get("earlier_variants", ()))
        return cls(**data)

    def summary(self) -> dict[str, Any]:
        """The record as the admin API shows it: without the baseline figures."""
        data = self.to_dict()
        del data["baseline"], data["baseline_scores"]
        step = self.current_step
        data["step_name"] = None if step is None else step.describe()
        data["steps"] = len(self.plan.steps)
        return data
