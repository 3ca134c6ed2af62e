"""The rollout loop (README "Rollouts"): publish this process's figures, keep or take the
judge's lease, and carry out the operator's verbs.

Every process publishes its figures of the models being rolled out every `TICK_S`, and reads
each model's record (for `gateway_rollout_step`). One process at a time, the holder of the
store's lease (in embedded mode the only one), starts the config's plans and judges each
progressing rollout (gateway.rollout.judge); decisions are written by gateway.rollout.decisions,
whichever process makes them.
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
from gateway.rollout.analysis import load_statistics, requests_seen
from gateway.rollout.decisions import Decisions
from gateway.rollout.figures import own_figures
from gateway.rollout.judge import Judge
from gateway.rollout.plan import RolloutPlan
from gateway.rollout.record import DECISIONS, Phase, Rollout
from gateway.rollout.store import RolloutStore
from gateway.rollout.webhooks import Webhooks
from gateway.routing import RoutingState

log = logging.getLogger(__name__)

TICK_S = 0.5
MIN_TICK_S = 0.01  # between two ticks, however soon an analysis is due
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
        # Who judges is visible to operators (the lease's value): host, pid and a nonce.
        self.process = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.judging = False
        self._loading: asyncio.Future[None] | None = None  # scipy.stats, imported on a thread
        self.records: dict[str, Rollout] = {}  # each model's, as of the last tick
        webhooks = Webhooks()
        self.decisions = Decisions(store, control, metrics, monitor, webhooks, self.process,
                                   self.records)  # fmt: skip
        self.judge = Judge(self.decisions, monitor, webhooks, psi_threshold)
        self._task: asyncio.Task[None] | None = None
        self._ticking = asyncio.Lock()
        self._unreadable: set[str] = set()  # models whose record was logged as unreadable
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
        waiting = False  # for Redis: said once per outage, not at every tick
        while True:
            try:
                await self.tick()
                if waiting:
                    log.info("rollouts go on: Redis answers again")
                waiting = False
            except Unavailable as exc:
                if not waiting:
                    log.warning("rollouts wait for Redis: %s", exc)
                waiting = True
            except Exception:
                log.exception("rollout tick failed")
            await asyncio.sleep(self._until_next_tick())

    def _until_next_tick(self) -> float:
        """Seconds to the next tick: TICK_S, or sooner when an analysis this process judges is
        due before then, so that it runs on time rather than up to a tick late."""
        wait = TICK_S
        if self.judging:
            now = time.time()
            for record in self.records.values():
                if record.phase == "Progressing":
                    wait = min(wait, record.next_analysis - now)
        return max(wait, MIN_TICK_S)

    async def tick(self) -> None:
        """Read every model's record, publish figures of active ones, judge if leader; one
        tick at a time."""
        async with self._ticking:
            await self._tick()

    async def _tick(self) -> None:
        for model in self.control.table.all():
            await self._follow(model)
        configured = self._pending_plans()
        if not configured and not any(r.active for r in self.records.values()):
            if self.judging:
                await self.store.release(self.process)
                self.judging = False
            return
        self.judging = await self.store.acquire(self.process)
        if not self.judging:
            return
        # scipy.stats, imported on a thread (started by `begin`, or here after a restart)
        # while the rollout's first step runs, before its first analysis needs it.
        self._loading = self._loading or asyncio.ensure_future(load_statistics())
        await asyncio.shield(self._loading)
        for model, plan in configured.items():
            with contextlib.suppress(Conflict):
                await self.begin(model, plan, "the config's plan")
        for record in list(self.records.values()):
            if record.active:
                await self._judge_one(record)

    async def _follow(self, model: str) -> None:
        """Read `model`'s record; while it is active, publish this process's figures."""
        try:
            record = await self.store.get(model)
        except (ValueError, TypeError, KeyError) as exc:  # written by another version?
            if model not in self._unreadable:
                log.error("the rollout record of %s cannot be read, skipped: %s", model, exc)
            self._unreadable.add(model)
            return
        self._unreadable.discard(model)
        if record is None:
            self.records.pop(model, None)
            return
        self.records[model] = record
        self._count_from_zero(model)
        if record.active:
            await self.store.publish(model, self.process, own_figures(self.metrics, model))

    async def _judge_one(self, record: Rollout) -> None:
        """Judge one rollout; its failure (not Redis's) is logged and spares the others."""
        try:
            await self.judge.judge(record)
        except Conflict:  # an operator changed it meanwhile: judged again at the next tick
            pass
        except Unavailable:
            raise
        except Exception:
            log.exception("rollout of %s could not be judged", record.model)

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
            if record is None or not (record.active or plan.variant in record.variants()):
                pending[model] = plan
        return pending

    # -- the operator's verbs (admin API) ----------------------------------------------------

    async def begin(self, model: str, plan: RolloutPlan | None, source: str = "") -> Rollout:
        """Start a rollout of `plan` (default: the config's) from the current routing."""
        self._loading = self._loading or asyncio.ensure_future(load_statistics())
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
        new = Rollout.begin(model, plan, _without(entry.state if entry else state, plan.variant))
        new = replace(
            new,
            version=old.version if old else 0,
            earlier_variants=old.variants() if old else (),
            baseline=await self.decisions.figures(model),
            baseline_scores=self.decisions.scores(model),
        )
        reason = f"started {source or 'by an operator'}: {plan.steps[0].describe()}"
        return await self.decisions.record(new.decide("start", reason, []))

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
            return await self.decisions.advance(record, "resume", "resumed by an operator", [])
        resumed = record.decide(
            "resume", "resumed by an operator", [], phase="Progressing", inconclusive=0, message=""
        )
        return await self.decisions.record(replace(resumed, next_analysis=time.time()))

    async def promote(self, model: str, full: bool = False) -> Rollout:
        """Skip the current step's analysis (Argo's `promote`), or every step (`full`)."""
        record = await self._active(model)
        if full:
            return await self.decisions.finish(
                record, "promote", "promoted in full by an operator", []
            )
        return await self.decisions.advance(
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
        if record.base.same_routing(self.control.table.get(model)):
            raise Conflict(f"the routing of {model!r} is as it was before the rollout already")
        undone = replace(record, hands_off=False)
        return await self._by_operator(undone, "undo", "Degraded", "undone")

    async def _by_operator(
        self, record: Rollout, decision: str, phase: Phase, done: str
    ) -> Rollout:
        reason = f"{done} by an operator"
        return await self.decisions.record(
            record.decide(decision, reason, [], phase=phase, message=reason)
        )

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
        seen = 0.0 if step.pause else requests_seen((await self.judge.evidence(record, step))[0])
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

    def collect(self) -> list[Metric]:
        """`gateway_rollout_step`: each model's current step (0-based; the step count once
        promoted), as this process last read it."""
        step = GaugeMetricFamily(
            "gateway_rollout_step", "Current step of the model's rollout.", labels=["model"]
        )
        for model, record in sorted(self.records.items()):
            step.add_metric([model], record.step)
        return [step]


def _without(state: RoutingState, variant: str) -> RoutingState:
    """`state` without a canary or shadow of `variant`: the rollout takes it over, and a
    rollback must not leave it any traffic."""
    canary = None if state.canary and state.canary.variant == variant else state.canary
    shadows = tuple(shadow for shadow in state.shadows if shadow.variant != variant)
    return replace(state, canary=canary, shadows=shadows)
