"""Judging a rollout's step (README "Rollouts"): the analysis, then advance, wait or roll back.

At each analysis the variant is compared with live over the step's window (gateway.rollout.
analysis): any failed check rolls back at once; when every check passes or is skipped and the
step has lasted its duration and seen its requests, the rollout advances (after the gate
webhooks agree) or, after the last step, promotes; when the step's minimum is met but a check
is still inconclusive it waits, and after `inconclusive_limit` waits pauses for an operator.
"""

import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from gateway.monitoring.monitor import Monitor
from gateway.rollout.analysis import Check, Evidence, analyze, requests_seen, verdict
from gateway.rollout.decisions import Decisions
from gateway.rollout.figures import Figures, baseline, window
from gateway.rollout.plan import Step
from gateway.rollout.record import Rollout
from gateway.rollout.webhooks import Webhooks


class Judge:
    """Decides each analysis of a progressing rollout; run by the lease holder only."""

    def __init__(
        self,
        decisions: Decisions,
        monitor: Monitor,
        webhooks: Webhooks,
        psi_threshold: Callable[[str], float],
    ) -> None:
        self.decisions = decisions
        self.monitor = monitor
        self.webhooks = webhooks
        self._psi_threshold = psi_threshold

    async def judge(self, record: Rollout) -> None:
        """Write what is left of the last decision, then, if an analysis is due, decide."""
        record = await self.decisions.reconcile(record)
        if record.phase != "Progressing":
            return
        if await self.webhooks.rollback_requested(record):
            await self.decisions.record(
                record.decide(
                    "rollback",
                    "the rollback webhook asked for it",
                    [],
                    phase="Degraded",
                    message="rolled back by webhook",
                )
            )
            return
        now = time.time()
        if now < record.next_analysis:
            return
        step = record.current_step
        assert step is not None and not step.pause  # a pause step is Paused
        evidence, start = await self.evidence(record, step)
        checks = analyze(record.plan.analysis, evidence)
        checks, strikes = count_latency_strikes(checks, record.latency_strikes)
        record = replace(
            record,
            latency_strikes=strikes,
            next_analysis=next_analysis(record.next_analysis, record.plan.analysis.interval, now),
            baseline=start,
        )
        found = verdict(checks)
        ready = (
            now - record.step_started >= step.duration
            and requests_seen(evidence) >= step.min_requests
        )
        analysis = [check.to_dict() for check in checks]
        if found == "fail":
            reasons = "; ".join(f"{c.name}: {c.message}" for c in checks if c.verdict == "fail")
            await self.decisions.record(
                record.decide(
                    "rollback",
                    reasons,
                    analysis,
                    phase="Degraded",
                    message=f"rolled back: {reasons}",
                )
            )
        elif found == "pass" and ready:
            await self._pass(record, analysis)
        elif ready:
            await self._wait(record, analysis)
        else:
            await self.decisions.save(record)

    async def _pass(self, record: Rollout, analysis: list[dict[str, Any]]) -> None:
        last = record.step + 1 >= len(record.plan.steps)
        gate = "confirm-promotion" if last else "confirm-traffic-increase"
        if not await self.webhooks.confirmed(record, gate):
            await self.decisions.save(replace(record, message=f"waiting for the {gate} webhook"))
            return
        if last:
            await self.decisions.finish(record, "promote", "every step passed", analysis)
        else:
            await self.decisions.advance(
                record, "advance", f"step {record.step + 1} passed", analysis
            )

    async def _wait(self, record: Rollout, analysis: list[dict[str, Any]]) -> None:
        waited = record.inconclusive + 1
        limit = record.plan.analysis.inconclusive_limit
        if waited > limit:
            reason = f"inconclusive {waited} times (limit {limit}): waiting for an operator"
            await self.decisions.record(
                record.decide(
                    "pause", reason, analysis, phase="Paused", message=reason, inconclusive=waited
                )
            )
        else:
            reason = f"inconclusive ({waited} of {limit}): waiting"
            await self.decisions.record(
                record.decide("wait", reason, analysis, inconclusive=waited)
            )

    async def evidence(self, record: Rollout, step: Step) -> tuple[Evidence, dict[str, Figures]]:
        """What `step` of `record` is judged on, now, and the step's baseline completed with
        the processes seen for the first time (gateway.rollout.figures.baseline)."""
        model = record.model
        now = await self.decisions.figures(model)
        start = baseline(now, record.baseline, record.step_started)
        figures = window(now, start)
        scores = _since(self.decisions.scores(model), record.baseline_scores)
        return Evidence(
            step,
            record.base.live,
            record.plan.variant,
            figures,
            scores,
            self._outputs_psi(model),
            self._psi_threshold(model),
        ), start

    def _outputs_psi(self, model: str) -> dict[str, float | None]:
        _, report = self.monitor.latest(model)
        found: dict[str, float | None] = {}
        for variant, figures in (report or {}).get("variants", {}).items():
            values = [row["psi"] for row in figures["outputs"] if row.get("psi") is not None]
            found[variant] = max(values) if values else None
        return found


def next_analysis(due: float, interval: float, now: float) -> float:
    """When the analysis after the one `due` (epoch s) is due: `interval` seconds after it,
    so analyses keep their cadence however late the tick that ran one (an `interval` of 1 s
    means one a second, as Argo Rollouts' AnalysisRun does); from `now` if that is past."""
    following = due + interval
    return following if following > now else now + interval


def count_latency_strikes(checks: list[Check], strikes: int) -> tuple[list[Check], int]:
    """A latency check fails the step only if it failed at the previous analysis too: one
    noisy window (a pause of the machine) is not enough to roll back."""
    out = []
    for check in checks:
        if check.name == "latency" and check.verdict == "fail":
            strikes += 1
            if strikes < 2:
                check = replace(
                    check,
                    verdict="inconclusive",
                    message=f"{check.message} (once; twice in a row rolls back)",
                )
        elif check.name == "latency":
            strikes = 0
        out.append(check)
    return out, strikes


def _since(
    now: dict[str, dict[str, float]], start: dict[str, dict[str, float]]
) -> dict[str, dict[str, float]]:
    """Feedback score sums since `start`; a store that lost them (a restart in embedded mode)
    counts from zero."""
    found = {}
    for variant, values in now.items():
        before = start.get(variant, {})
        if values.get("rows", 0.0) < before.get("rows", 0.0):
            before = {}
        found[variant] = {k: v - before.get(k, 0.0) for k, v in values.items()}
    return found
