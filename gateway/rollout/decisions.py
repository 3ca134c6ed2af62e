"""Writing a rollout's decisions (README "Rollouts"): to its record, then to the routing history.

A decision is first written to the rollout's record (a compare-and-set), then its routing to
the history, as a revision that carries the analysis and is marked with the rollout's id and
the decision's number: a process that dies between the two leaves a record whose routing the
next judge writes, once. A routing change made by someone else meanwhile (a flip, a rollback)
ends the rollout without touching the routing: the operator's change wins.
"""

import contextlib
import logging
import time
from dataclasses import replace
from typing import Any

from gateway.control import ControlPlane
from gateway.errors import Conflict
from gateway.metrics import Metrics
from gateway.monitoring.monitor import Monitor
from gateway.rollout.figures import Figures, own_figures
from gateway.rollout.record import Rollout
from gateway.rollout.store import RolloutStore
from gateway.rollout.webhooks import Webhooks

log = logging.getLogger(__name__)


class Decisions:
    """Writes decisions and moves rollouts between steps; `records` is kept up to date with
    every record written (each model's latest, for the process's gauges)."""

    def __init__(
        self,
        store: RolloutStore,
        control: ControlPlane,
        metrics: Metrics,
        monitor: Monitor,
        webhooks: Webhooks,
        process: str,
        records: dict[str, Rollout],
    ) -> None:
        self.store = store
        self.control = control
        self.metrics = metrics
        self.monitor = monitor
        self.webhooks = webhooks
        self.process = process
        self._records = records

    async def figures(self, model: str) -> dict[str, Figures]:
        """Every process's figures of `model` (this one's fresh), by process."""
        await self.store.publish(model, self.process, own_figures(self.metrics, model))
        return await self.store.figures(model)

    def scores(self, model: str) -> dict[str, dict[str, float]]:
        """Feedback score sums by variant, as the monitor read them at its last tick."""
        scores, _ = self.monitor.latest(model)
        return {variant: dict(values) for variant, values in scores.items() if variant}

    async def advance(
        self, record: Rollout, decision: str, reason: str, analysis: list[dict[str, Any]]
    ) -> Rollout:
        """Go on to the next step (or promote after the last), with a fresh window."""
        following = record.step + 1
        if following >= len(record.plan.steps):
            return await self.finish(record, decision, reason, analysis)
        step = record.plan.steps[following]
        phase = "Paused" if step.pause else "Progressing"
        now = time.time()
        model = record.model
        return await self.record(
            record.decide(
                decision,
                f"{reason}; now {step.describe()}",
                analysis,
                step=following,
                phase=phase,
                step_started=now,
                next_analysis=now + record.plan.analysis.interval,
                inconclusive=0,
                latency_strikes=0,
                baseline=await self.figures(model),
                baseline_scores=self.scores(model),
                message=f"paused at step {following + 1}: resume to go on" if step.pause else "",
            )
        )

    async def finish(
        self, record: Rollout, decision: str, reason: str, analysis: list[dict[str, Any]]
    ) -> Rollout:
        """Make the variant live: the rollout is Healthy."""
        return await self.record(
            record.decide(
                decision,
                reason,
                analysis,
                phase="Healthy",
                step=len(record.plan.steps),
                message=f"{record.plan.variant} is live",
            )
        )

    async def save(self, record: Rollout) -> Rollout:
        """Store the record (compare-and-set: Conflict if someone wrote it meanwhile)."""
        saved = await self.store.put(record)
        self._records[record.model] = saved
        return saved

    async def record(self, record: Rollout) -> Rollout:
        """Store a record with a new decision, count it, route as it says, tell the hooks."""
        saved = await self.save(record)
        decision = saved.decisions[-1]
        self.metrics.rollout_decision(saved.model, decision.decision)
        log.info(
            "rollout of %s/%s: %s (%s)",
            saved.model,
            saved.plan.variant,
            decision.decision,
            decision.reason,
        )
        routed = await self.reconcile(saved)
        self.webhooks.event(routed)
        return routed

    async def reconcile(self, record: Rollout) -> Rollout:
        """Write the routing of the record's last decision, once; or notice that someone
        else changed the routing meanwhile and end the rollout."""
        decision = record.decisions[-1]
        head = await self.control.store.current(record.model)
        if record.applied >= decision.number:
            if record.active and head is not None and head.revision > record.applied_revision:
                return await self.record(
                    record.decide(
                        "abort",
                        f"routing changed outside the rollout (revision {head.revision}: "
                        f"{head.action})",
                        [],
                        phase="Degraded",
                        message="ended by a routing change outside the rollout, left as it is",
                        hands_off=True,
                    )
                )
            return record
        marker = {"rollout": record.id, "decision": decision.number}
        if head is not None and head.analysis is not None and _marks(head.analysis, marker):
            revision = head.revision  # a judge before us wrote it and died
        else:
            action = f"rollout {record.plan.variant} {decision.decision}: {decision.reason}"
            analysis = {
                **marker,
                "step": decision.step,
                "outcome": decision.decision,
                "reason": decision.reason,
                "checks": decision.checks,
            }
            # Hands off: the same routing as now, as a revision that carries the decision.
            routing = record.desired() or (head.state if head else record.base)
            try:
                revision = (
                    await self.control.apply(record.model, action, routing, analysis)
                ).revision
            except Conflict:  # another process wrote the same decision meanwhile, or routing moved
                head = await self.control.store.current(record.model)
                if head is None or not _marks(head.analysis or {}, marker):
                    raise
                revision = head.revision
        with contextlib.suppress(Conflict):  # the next tick writes it again
            record = await self.save(
                replace(record, applied=decision.number, applied_revision=revision)
            )
        return record


def _marks(analysis: dict[str, Any], marker: dict[str, Any]) -> bool:
    """Whether a history entry's analysis is that of this rollout's decision."""
    return all(analysis.get(key) == value for key, value in marker.items())
