"""The rollout loop: publish this process's figures, and, holding the lease, judge each step.

README "Rollouts". Every process publishes its figures of the models being rolled out every
`TICK_S`. One process at a time (the holder of the store's lease; in embedded mode the only one)
judges: at each analysis it compares the variant with live over the step's window and decides
to advance, wait, pause or roll back. A decision is first written to the rollout's record
(a compare-and-set), then its routing to the history, as a revision that carries the analysis:
a judge that dies between the two leaves a record whose routing the next judge writes, once.
A routing change made by someone else meanwhile (a flip, a rollback) ends the rollout without
touching the routing: the operator's change wins.
"""

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from prometheus_client.core import GaugeMetricFamily, Metric

from gateway.control import ControlPlane
from gateway.errors import Conflict, NotFound, Unavailable
from gateway.metrics import Metrics
from gateway.monitoring.monitor import Monitor
from gateway.rollout.analysis import Check, Evidence, analyze, requests_seen, verdict
from gateway.rollout.figures import own_figures, window
from gateway.rollout.plan import RolloutPlan, Step
from gateway.rollout.record import DECISIONS, Phase, Rollout
from gateway.rollout.store import RolloutStore
from gateway.rollout.webhooks import Webhooks

log = logging.getLogger(__name__)

TICK_S = 0.5
Plans = Callable[[], dict[str, RolloutPlan]]  # the config's plans, by model


class RolloutController:
    """Judges rollouts (when it holds the lease) and carries out the operator's verbs."""

    def __init__(
        self,
        store: RolloutStore,
        control: ControlPlane,
        metrics: Metrics,
        monitor: Monitor,
        plans: Plans,
        psi_threshold: Callable[[str], float],
    ) -> None:
        self.store = store
        self.control = control
        self.metrics = metrics
        self.monitor = monitor
        self._plans = plans
        self._psi_threshold = psi_threshold
        # Who judges is visible to operators (the lease's value): host, pid and a nonce.
        self.process = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.judging = False
        self.records: dict[str, Rollout] = {}  # each model's, as of the last tick
        self._webhooks = Webhooks()
        self._task: asyncio.Task[None] | None = None
        self._ticking = asyncio.Lock()
        self.metrics.registry.register(self)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.judging:
            with contextlib.suppress(Unavailable):
                await self.store.release(self.process)
        self.metrics.registry.unregister(self)

    async def _run(self) -> None:
        while True:
            try:
                await self.tick()
            except Unavailable as exc:
                log.warning("rollouts wait for Redis: %s", exc)
            except Exception:
                log.exception("rollout tick failed")
            await asyncio.sleep(TICK_S)

    async def tick(self) -> None:
        """Read every model's record, publish figures of active ones, judge if leader; one
        tick at a time."""
        async with self._ticking:
            await self._tick()

    async def _tick(self) -> None:
        for model in self.control.table.all():
            record = await self.store.get(model)
            if record is None:
                self.records.pop(model, None)
            else:
                self.records[model] = record
                self._count_from_zero(model)
            if record is not None and record.active:
                await self.store.publish(model, self.process, own_figures(self.metrics, model))
        configured = self._pending_plans()
        if not configured and not any(r.active for r in self.records.values()):
            if self.judging:
                await self.store.release(self.process)
                self.judging = False
            return
        self.judging = await self.store.acquire(self.process)
        if not self.judging:
            return
        for model, plan in configured.items():
            with contextlib.suppress(Conflict):
                await self.begin(model, plan, "the config's plan")
        for record in list(self.records.values()):
            if record.active:
                with contextlib.suppress(Conflict):
                    await self._judge(record)

    def _count_from_zero(self, model: str) -> None:
        """Give every decision of a rolled-out model a series at 0, so that the first rollback
        is an increase a Prometheus rule sees (a series born at 1 is not one)."""
        for decision in DECISIONS:
            self.metrics.rollout_decisions.slot((model, decision))

    def _pending_plans(self) -> dict[str, RolloutPlan]:
        """The config's plans not started yet (a finished or aborted one is not restarted)."""
        pending = {}
        for model, plan in self._plans().items():
            record = self.records.get(model)
            live = self.control.table.all().get(model)
            if live is None or live.live == plan.variant:
                continue
            if record is None or (not record.active and record.plan.variant != plan.variant):
                pending[model] = plan
        return pending

    # -- the operator's verbs (admin API) ----------------------------------------------------

    async def begin(self, model: str, plan: RolloutPlan | None, source: str = "") -> Rollout:
        """Start a rollout of `plan` (default: the config's) from the current routing."""
        state = self.control.table.get(model)
        if plan is None:
            plan = self._plans().get(model)
            if plan is None:
                raise NotFound(f"model {model!r} has no rollout plan in the config; post one")
        if plan.variant not in self.control.variants(model):
            raise NotFound(f"model {model!r} has no variant {plan.variant!r}")
        if plan.variant == state.live:
            raise Conflict(f"{plan.variant!r} is live already; a rollout ships another variant")
        old = await self.store.get(model)
        if old is not None and old.active:
            raise Conflict(
                f"model {model!r} is rolling out {old.plan.variant!r} already; abort it first"
            )
        entry = await self.control.store.current(model)
        new = Rollout.begin(model, plan, entry.state if entry else state)
        new = replace(
            new,
            version=old.version if old else 0,
            baseline=await self._figures(model),
            baseline_scores=self._scores(model),
        )
        reason = f"started {source or 'by an operator'}: {plan.steps[0].describe()}"
        return await self._record(new.decide("start", reason, []))

    async def pause(self, model: str) -> Rollout:
        record = await self._active(model)
        if record.phase == "Paused":
            raise Conflict(f"the rollout of {model!r} is paused already")
        return await self._by_operator(record, "pause", "Paused", "paused")

    async def resume(self, model: str) -> Rollout:
        """Continue a paused rollout; at a `pause` step, go on to the next step."""
        record = await self._active(model)
        if record.phase != "Paused":
            raise Conflict(f"the rollout of {model!r} is not paused")
        step = record.current_step
        if step is not None and step.pause:
            return await self._advance(record, "resume", "resumed by an operator", [])
        resumed = record.decide(
            "resume", "resumed by an operator", [], phase="Progressing", inconclusive=0, message=""
        )
        return await self._record(replace(resumed, next_analysis=time.time()))

    async def promote(self, model: str, full: bool = False) -> Rollout:
        """Skip the current step's analysis (Argo's `promote`), or every step (`full`)."""
        record = await self._active(model)
        if full:
            return await self._finish(record, "promote", "promoted in full by an operator", [])
        return await self._advance(
            record, "skip", f"step {record.step + 1} skipped by an operator", []
        )

    async def abort(self, model: str) -> Rollout:
        """Send every request back to the routing before the rollout."""
        record = await self._active(model)
        return await self._by_operator(record, "abort", "Degraded", "aborted")

    async def undo(self, model: str) -> Rollout:
        """Restore the routing from before the last rollout, whatever its phase."""
        record = await self.store.get(model)
        if record is None:
            raise NotFound(f"model {model!r} has had no rollout")
        if record.phase == "Degraded":
            raise Conflict(f"the rollout of {model!r} is rolled back already")
        return await self._by_operator(record, "undo", "Degraded", "undone")

    async def _by_operator(
        self, record: Rollout, decision: str, phase: Phase, done: str
    ) -> Rollout:
        reason = f"{done} by an operator"
        return await self._record(record.decide(decision, reason, [], phase=phase, message=reason))

    async def status(self, model: str) -> Rollout:
        self.control.table.get(model)
        record = await self.store.get(model)
        if record is None:
            raise NotFound(f"model {model!r} has had no rollout")
        return record

    async def progress(self, record: Rollout) -> dict[str, Any] | None:
        """How far the current step is: seconds and requests against its minimums."""
        step = record.current_step
        if not record.active or step is None:
            return None
        seen = 0.0 if step.pause else requests_seen(await self._evidence(record, step))
        return {
            "judge": await self.store.holder(),
            "elapsed_s": round(time.time() - record.step_started, 3),
            "duration_s": step.duration,
            "requests": int(seen),
            "min_requests": step.min_requests,
            "next_analysis_s": round(max(record.next_analysis - time.time(), 0.0), 3),
        }

    async def _active(self, model: str) -> Rollout:
        record = await self.status(model)
        if not record.active:
            raise Conflict(f"the rollout of {model!r} is over ({record.phase}: {record.message})")
        return record

    # -- judging -----------------------------------------------------------------------------

    async def _judge(self, record: Rollout) -> None:
        record = await self._reconcile(record)
        if not record.active:
            return
        if record.phase != "Progressing":
            return
        if await self._webhooks.rollback_requested(record):
            await self._record(
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
        evidence = await self._evidence(record, step)
        checks = analyze(record.plan.analysis, evidence)
        checks, strikes = _latency_strikes(checks, record.latency_strikes)
        record = replace(
            record, latency_strikes=strikes, next_analysis=now + record.plan.analysis.interval
        )
        found = verdict(checks)
        ready = (
            now - record.step_started >= step.duration
            and requests_seen(evidence) >= step.min_requests
        )
        analysis = [check.to_dict() for check in checks]
        if found == "fail":
            reasons = "; ".join(f"{c.name}: {c.message}" for c in checks if c.verdict == "fail")
            await self._record(
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
            await self._save(record)

    async def _pass(self, record: Rollout, analysis: list[dict[str, Any]]) -> None:
        last = record.step + 1 >= len(record.plan.steps)
        gate = "confirm-promotion" if last else "confirm-traffic-increase"
        if not await self._webhooks.confirmed(record, gate):
            await self._save(replace(record, message=f"waiting for the {gate} webhook"))
            return
        if last:
            await self._finish(record, "promote", "every step passed", analysis)
        else:
            await self._advance(record, "advance", f"step {record.step + 1} passed", analysis)

    async def _wait(self, record: Rollout, analysis: list[dict[str, Any]]) -> None:
        waited = record.inconclusive + 1
        limit = record.plan.analysis.inconclusive_limit
        if waited > limit:
            reason = f"inconclusive {waited} times (limit {limit}): waiting for an operator"
            await self._record(
                record.decide(
                    "pause", reason, analysis, phase="Paused", message=reason, inconclusive=waited
                )
            )
        else:
            reason = f"inconclusive ({waited} of {limit}): waiting"
            await self._record(record.decide("wait", reason, analysis, inconclusive=waited))

    async def _advance(
        self, record: Rollout, decision: str, reason: str, analysis: list[dict[str, Any]]
    ) -> Rollout:
        """Go on to the next step (or promote after the last), with a fresh window."""
        following = record.step + 1
        if following >= len(record.plan.steps):
            return await self._finish(record, decision, reason, analysis)
        step = record.plan.steps[following]
        phase = "Paused" if step.pause else "Progressing"
        now = time.time()
        model = record.model
        return await self._record(
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
                baseline=await self._figures(model),
                baseline_scores=self._scores(model),
                message=f"paused at step {following + 1}: resume to go on" if step.pause else "",
            )
        )

    async def _finish(
        self, record: Rollout, decision: str, reason: str, analysis: list[dict[str, Any]]
    ) -> Rollout:
        return await self._record(
            record.decide(
                decision,
                reason,
                analysis,
                phase="Healthy",
                step=len(record.plan.steps),
                message=f"{record.plan.variant} is live",
            )
        )

    async def _evidence(self, record: Rollout, step: Step) -> Evidence:
        model = record.model
        figures = window(await self._figures(model), record.baseline)
        scores = _since(self._scores(model), record.baseline_scores)
        return Evidence(
            step,
            record.base.live,
            record.plan.variant,
            figures,
            scores,
            self._outputs_psi(model),
            self._psi_threshold(model),
        )

    async def _figures(self, model: str) -> dict[str, Any]:
        await self.store.publish(model, self.process, own_figures(self.metrics, model))
        return await self.store.figures(model)

    def _scores(self, model: str) -> dict[str, dict[str, float]]:
        scores, _ = self.monitor.latest(model)
        return {variant: dict(values) for variant, values in scores.items() if variant}

    def _outputs_psi(self, model: str) -> dict[str, float | None]:
        _, report = self.monitor.latest(model)
        found: dict[str, float | None] = {}
        for variant, figures in (report or {}).get("variants", {}).items():
            values = [row["psi"] for row in figures["outputs"] if row.get("psi") is not None]
            found[variant] = max(values) if values else None
        return found

    # -- writing decisions -------------------------------------------------------------------

    async def _save(self, record: Rollout) -> Rollout:
        saved = await self.store.put(record)
        self.records[record.model] = saved
        return saved

    async def _record(self, record: Rollout) -> Rollout:
        """Store a record with a new decision, count it, tell the webhooks, route as it says."""
        saved = await self._save(record)
        decision = saved.decisions[-1]
        self.metrics.rollout_decision(saved.model, decision.decision)
        log.info(
            "rollout of %s/%s: %s (%s)",
            saved.model,
            saved.plan.variant,
            decision.decision,
            decision.reason,
        )
        await self._webhooks.event(saved)
        return await self._reconcile(saved)

    async def _reconcile(self, record: Rollout) -> Rollout:
        """Write the routing of the record's last decision, once; or notice that someone
        else changed the routing meanwhile and end the rollout."""
        decision = record.decisions[-1]
        head = await self.control.store.current(record.model)
        if record.applied >= decision.number:
            if record.active and head is not None and head.revision > record.applied_revision:
                # Recorded as applied already: the operator's routing stays as it is.
                return await self._record(
                    record.decide(
                        "abort",
                        f"routing changed outside the rollout (revision {head.revision}: "
                        f"{head.action})",
                        [],
                        phase="Degraded",
                        message="routing changed by an operator",
                        applied=decision.number + 1,
                        applied_revision=head.revision,
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
            try:
                revision = (
                    await self.control.apply(record.model, action, record.desired(), analysis)
                ).revision
            except Conflict:  # another process wrote the same decision meanwhile, or routing moved
                head = await self.control.store.current(record.model)
                if head is None or not _marks(head.analysis or {}, marker):
                    raise
                revision = head.revision
        with contextlib.suppress(Conflict):  # the next tick writes it again
            record = await self._save(
                replace(record, applied=decision.number, applied_revision=revision)
            )
        return record

    def collect(self) -> list[Metric]:
        """`gateway_rollout_step`: each model's current step (0-based; the step count once
        promoted), as this process last read it."""
        step = GaugeMetricFamily(
            "gateway_rollout_step", "Current step of the model's rollout.", labels=["model"]
        )
        for model, record in sorted(self.records.items()):
            step.add_metric([model], record.step)
        return [step]


def _marks(analysis: dict[str, Any], marker: dict[str, Any]) -> bool:
    """Whether a history entry's analysis is that of this rollout's decision."""
    return all(analysis.get(key) == value for key, value in marker.items())


def _latency_strikes(checks: list[Check], strikes: int) -> tuple[list[Check], int]:
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
