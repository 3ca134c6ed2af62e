"""One inference, start to end: route -> validate -> run -> hand a copy to the shadows.

The service knows nothing about HTTP. Side channels (shadow log, metrics) hang off it: they are
called after the answer is known and never raise into the request.
"""

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from gateway.errors import BadRequest, ModelRefused, NotFound, Unavailable
from gateway.metrics import Metrics
from gateway.routing import Route, RoutingTable, choose_variant, sample_shadows
from gateway.runtime import Held, ModelRepository, ModelSession, Scheduler, batch_rows
from gateway.shadow import Observe, ShadowJob, ShadowLog
from gateway.types import InferRequest, InferResult

if TYPE_CHECKING:
    from gateway.tracing import RequestTrace

DIRECT = "direct"


class InferenceService:
    """Answers inference requests from the loaded variants, as the routing table says."""

    def __init__(
        self,
        repository: ModelRepository,
        table: RoutingTable,
        scheduler: Scheduler,
        metrics: Metrics,
        shadow_log: ShadowLog,
        timeout: float,
    ) -> None:
        self.repository = repository
        self.table = table
        self.scheduler = scheduler
        self.metrics = metrics
        self.shadow_log = shadow_log
        self.timeout = timeout
        self.ready = False
        # Handed every answer (the monitor's `observe`, README "Monitoring"), if set.
        self.observe: Observe | None = None
        self.unready_reason = "models are still loading"  # what a 503 says while not ready

    def route(self, model: str, headers: Mapping[bytes, bytes]) -> Route:
        """Choose the variant for a routed request (live or canary); `headers` as in ASGI."""
        try:
            state = self.table.get(model)
        except NotFound:
            self._routing_unknown(model)
            raise
        sticky = None
        if state.sticky_header is not None:
            value = headers.get(state.sticky_header.encode("latin-1"))
            sticky = None if value is None else value.decode("latin-1")
        return choose_variant(model, state, sticky)

    def direct(self, model: str, variant: str) -> Route:
        """A route straight to one variant, bypassing routing (testing a green before a flip)."""
        self.repository.session(model, variant)
        try:
            state = self.table.get(model)
        except NotFound:
            self._routing_unknown(model)
            raise
        return Route(variant, DIRECT, state.revision)  # direct: no shadows

    def _routing_unknown(self, model: str) -> None:
        """503, not 404, for a served model whose routing is not known yet (Redis down)."""
        if not self.ready and model in self.repository.models:
            raise Unavailable(f"the gateway is not ready yet: {self.unready_reason}")

    def session(self, model: str, variant: str) -> ModelSession:
        return self.repository.session(model, variant)

    def admit(self, session: ModelSession, started: float, hold: bool = False) -> Held | None:
        """Refuse at once a request the variant's queue cannot take (429, or 504 when it could
        not be answered before its deadline), before its body is read and decoded. `hold`: keep
        its place while the body is read (`Scheduler.admit`)."""
        return self.scheduler.admit(session, started + self.timeout, hold)

    async def infer(
        self,
        session: ModelSession,
        route: Route,
        request: InferRequest,
        request_id: str,
        started: float,
        row_ids: Sequence[str] | None = None,
        trace: "RequestTrace | None" = None,
    ) -> InferResult:
        """Run `request` on `session` (the variant of `route`); mirror it to sampled shadows.
        `started`: when the request arrived (`time.perf_counter()`); its deadline counts from
        then. `row_ids`: one request id per row when each row is a request of its own, run in
        one batch (README "Batch inference"): the monitor and the shadows see each row alone.
        `trace`: the request's trace, told when its queue wait and model run end."""
        if not self.ready:
            raise Unavailable(f"the gateway is not ready yet: {self.unready_reason}")
        session.validate(request.inputs)
        names = _output_names(session, request)
        rows = batch_rows(request.inputs)
        deadline = started + min(self.timeout, request.timeout_s or self.timeout)
        if trace is not None:
            trace.mark()
        try:
            outputs, elapsed = await self.scheduler.run(
                session, request.inputs, names, rows, deadline
            )
        except ModelRefused:
            self.metrics.model_failure(session.model, route.variant, route.role)
            raise
        if trace is not None:
            trace.ran(elapsed)
        self.metrics.observe_inference(session.model, route.variant, elapsed, rows)
        result = InferResult(
            session.model, route.variant, route.role, route.revision, outputs, session.output_specs
        )
        if row_ids is not None:
            self._each_row(route, request.inputs, result, elapsed, row_ids)
            return result
        if self.observe is not None:
            self.observe(
                session.model, route.variant, route.role, request_id, request.inputs, outputs
            )
        if route.shadows:
            for shadow in sample_shadows(route.shadows):
                self.shadow_log.submit(
                    ShadowJob(
                        session.model, shadow.variant, request_id, request.inputs, result, elapsed
                    )
                )
        return result

    def _each_row(
        self,
        route: Route,
        inputs: dict[str, np.ndarray],
        result: InferResult,
        elapsed: float,
        row_ids: Sequence[str],
    ) -> None:
        """Hand each row of a batch to the monitor, and to sampled shadows, under its own id."""
        observe, shadows = self.observe, route.shadows
        if observe is None and not shadows:
            return
        model, variant, outputs = result.model, route.variant, result.outputs
        for row, row_id in enumerate(row_ids):
            picked = slice(row, row + 1)
            row_inputs = {name: array[picked] for name, array in inputs.items()}
            row_outputs = {name: array[picked] for name, array in outputs.items()}
            if observe is not None:
                observe(model, variant, route.role, row_id, row_inputs, row_outputs)
            for shadow in sample_shadows(shadows) if shadows else ():
                answer = result._replace(outputs=row_outputs)
                job = ShadowJob(model, shadow.variant, row_id, row_inputs, answer, elapsed)
                self.shadow_log.submit(job)


def _output_names(session: ModelSession, request: InferRequest) -> list[str]:
    if request.outputs is None:
        return session.output_names
    names = [output.name for output in request.outputs]
    for name in names:
        if name not in session.output_specs:
            raise BadRequest(
                f"unknown output {name!r}; the model's outputs are {session.output_names}"
            )
    return names
