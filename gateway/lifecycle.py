"""The running gateway: opens every resource in order, closes them in reverse, and reloads.

`Gateway.start` loads and warms the models (in a thread), connects the routing store, adopts the
stored routing, starts the shadow log and the routing watch; only then is the service ready.

With Redis down at start-up, a model is served at its last-known routing (kept under `data_dir`
by every process that saw it; `gateway_routing_stale` is 1 until Redis confirms it), or, with
none, the service stays not ready until Redis answers. The config file's routing only ever seeds
an empty store (README, "Several workers and replicas").
"""

import asyncio
import contextlib
import gc
import logging
import os
from collections.abc import Collection, Mapping
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry

from gateway.access_log import AccessLog
from gateway.control import (
    ControlPlane,
    EmbeddedStore,
    HistoryEntry,
    LastKnownRouting,
    RoutingStore,
)
from gateway.errors import ConfigError, Conflict, Unavailable
from gateway.metrics import METRICS_DIR_ENV, Metrics
from gateway.monitoring.monitor import Monitor
from gateway.rollout.controller import RolloutController
from gateway.rollout.plan import RolloutPlan
from gateway.rollout.store import EmbeddedRollouts, RedisRollouts, RolloutStore
from gateway.routing import RoutingState, RoutingTable
from gateway.runtime import (
    ModelRepository,
    ModelSession,
    QueuePolicy,
    Runner,
    Scheduler,
    load_repository,
)
from gateway.service import InferenceService
from gateway.settings import Settings, load_settings
from gateway.shadow import ShadowLog, ShadowSink
from gateway.sinks import JsonLinesSink, RedisStreamSink
from gateway.sources.follow import AliasFollower
from gateway.sources.resolve import Key, ResolvedSource
from gateway.streams.config import select_consumers
from gateway.streams.tasks import ConsumerTasks

if TYPE_CHECKING:  # imported only with Redis: gateway.errors.redis_errors
    import redis.asyncio as aioredis

log = logging.getLogger(__name__)

STORE_RETRY_S = 0.5  # how often routing that Redis has not confirmed asks it again


class Gateway:
    """Owns the model sessions, routing, shadow log and Redis client of one worker."""

    repository: ModelRepository
    control: ControlPlane
    shadow_log: ShadowLog
    runner: Runner
    scheduler: Scheduler
    service: InferenceService
    monitor: Monitor
    rollouts: RolloutController
    model_sources: AliasFollower
    consumers: ConsumerTasks

    def __init__(
        self,
        settings: Settings,
        registry: CollectorRegistry,
        repository: ModelRepository | None = None,
        consumers: Collection[str] | None = None,
    ) -> None:
        """`consumers`: the event-stream consumers to run by name (all when empty); None: those
        the settings run in `gateway serve` (README "Event streams")."""
        self.settings = settings
        self._consumer_names = consumers
        self.metrics = Metrics(registry, os.environ.get(METRICS_DIR_ENV))
        self._preloaded = repository
        self._redis: aioredis.Redis | None = None
        self._reload_lock = asyncio.Lock()
        self.access_log: AccessLog | None = None
        self._stale: dict[str, HistoryEntry] = {}  # served from last-known, until Redis confirms
        self._unknown: dict[str, RoutingState] = {}  # no routing yet: the config's, to seed with
        self._settling: asyncio.Task[None] | None = None

    async def start(self) -> InferenceService:
        settings = self.settings
        store = self._store()
        with contextlib.suppress(Unavailable):  # Redis down: the watch opens it when it is back
            await store.open()
        repository = self._preloaded
        if repository is None:
            repository = await asyncio.to_thread(load_repository, settings)
        self._preloaded = None
        table = RoutingTable({})
        self.control = ControlPlane(
            store, table, self._variants, self._publish_routing, self._last_known()
        )
        self.repository = repository
        await self._adopt_routing(_initial_states(settings))
        self.shadow_log = ShadowLog(
            repository,
            self._sink(),
            self.metrics,
            log_inputs={name: model.log_inputs for name, model in settings.models.items()},
            queue_size=settings.shadow_queue_size,
            concurrency=settings.shadow_concurrency,
            max_batch_size=_max_batch_sizes(settings),
        )
        self.shadow_log.start()
        self.runner = Runner(inline_below_s=settings.inline_run_below_s)
        self.scheduler = Scheduler(self.runner, queue_policies(settings), self.metrics)
        self.scheduler.configure(queue_policies(settings), _sessions(repository))
        self.service = InferenceService(
            repository, table, self.scheduler, self.metrics, self.shadow_log,
            settings.request_timeout_s,
        )  # fmt: skip
        self.monitor = Monitor(
            settings, repository, table, self.metrics, self.metrics.registry, self._redis
        )
        await self.monitor.start()
        self.service.observe = self.shadow_log.observe = self.monitor.observe
        self.rollouts = RolloutController(
            self._rollout_store(), self.control, self.metrics, self.monitor, self._plans,
            lambda model: self.settings.models[model].monitoring.psi_threshold,
        )  # fmt: skip
        self.rollouts.start()
        self.model_sources = AliasFollower(self)  # models:/NAME@ALIAS variants follow the alias
        self.model_sources.start()
        self.control.watch(self._reload_from_peer)
        if settings.access_log:
            self.access_log = AccessLog()
            self.access_log.start()
        self._settle_routing()
        self.consumers = ConsumerTasks(
            select_consumers(settings.consumers, self._consumer_names), self.service,
            self.metrics, settings, self.access_log,
        )  # fmt: skip
        self.consumers.start()
        # What start-up made (modules, sessions, scipy's tables) lives as long as the process:
        # moved out of the collector's view, a full collection scans only what serving made.
        # Without it, one took up to 70 ms on the event loop (CPython's gc.freeze docs).
        gc.freeze()
        return self.service

    async def stop(self) -> None:
        await self.consumers.stop(self.settings.shutdown_timeout_s)  # answers need the service
        self.service.ready = False
        if self._settling is not None:
            self._settling.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._settling
        if self.access_log is not None:
            self.access_log.stop()
        await self.model_sources.stop()
        await self.rollouts.stop()
        await self.control.stop()
        await self.monitor.stop()
        await self.shadow_log.close()
        self.runner.close()
        if self._redis is not None:
            await self._redis.aclose()

    async def reload(
        self, announce: bool = True, moved: Mapping[Key, ResolvedSource] | None = None
    ) -> list[str]:
        """Re-read the config file, load new or changed variants, then switch to them; with
        `moved` (aliases the registry poll found at new versions), load those with the config
        as it is.

        Sessions are loaded and warmed before anything can route to them; requests keep using
        the old ones until the switch. Routing of existing models stays as the admin API set it.
        """
        async with self._reload_lock:
            settings = self._reread() if moved is None else self.settings
            current = self.service.table.all()
            try:
                repository = await asyncio.to_thread(
                    load_repository, settings, self.repository, moved
                )
            except ConfigError as exc:
                raise Conflict(f"config not reloaded: {exc}") from None
            for model, state in current.items():
                if (
                    model in repository.models
                    and not state.variants() <= repository.models[model].keys()
                ):
                    raise Conflict(
                        f"model {model!r}: the new config drops a variant its routing uses; "
                        "flip, abort or change shadows first"
                    )
            for model, record in self.rollouts.records.items():
                variants = repository.models.get(model)
                if record.active and variants is not None and record.plan.variant not in variants:
                    raise Conflict(
                        f"model {model!r}: the new config drops {record.plan.variant!r}, which "
                        "a rollout ships; abort it first"
                    )
            if announce:  # tell the other workers and replicas; 503 here changes nothing yet
                await self.control.store.announce_reload()
            self._switch(settings, repository)
            self.monitor.configure(settings, repository)
            new = {m: s for m, s in _initial_states(settings).items() if m not in current}
            await self._adopt_routing(new)
            self._settle_routing()
            log.info("reloaded %s: serving %s", settings.config_path, sorted(repository.models))
            return sorted(repository.models)

    def _reread(self) -> Settings:
        path = self.settings.config_path
        if path is None:
            raise Conflict("the gateway was started without a config file; nothing to reload")
        try:
            return load_settings(path)
        except ConfigError as exc:
            raise Conflict(f"config not reloaded: {exc}") from None

    def _switch(self, settings: Settings, repository: ModelRepository) -> None:
        kept = {m: s for m, s in self.service.table.all().items() if m in repository.models}
        self.settings = settings
        self.repository = repository
        self.service.repository = repository
        self.shadow_log.repository = repository
        self.scheduler.configure(queue_policies(settings), _sessions(repository))
        self.shadow_log.log_inputs = {n: m.log_inputs for n, m in settings.models.items()}
        self.shadow_log.max_batch_size = _max_batch_sizes(settings)
        self.service.table.replace_all(kept)
        for model, state in kept.items():
            self._publish_routing(model, state)

    async def _reload_from_peer(self) -> None:
        try:
            await self.reload(announce=False)
        except Exception as exc:  # the peer that started the reload reported its own result
            log.error("reload announced by another worker failed here: %s", exc)

    async def _adopt_routing(self, states: dict[str, RoutingState]) -> None:
        for model, state in states.items():
            try:
                await self.control.adopt(model, state)
            except Unavailable as exc:
                self._without_store(model, state, exc)

    def _without_store(self, model: str, initial: RoutingState, exc: Unavailable) -> None:
        """Serve the model's last-known routing until Redis confirms it; with none, nothing."""
        memory, entry = self.control.last_known, self.control.recall(model)
        if memory is None or entry is None:
            self._unknown[model] = initial
            log.warning(
                "Redis is unreachable and %s has no last-known routing under %s: not ready "
                "until Redis answers (%s)", model, self.settings.data_dir, exc,
            )  # fmt: skip
            return
        self._stale[model] = entry
        self.control.install(model, entry)
        log.warning(
            "Redis is unreachable: serving the last-known routing of %s, revision %d (%s), from "
            "%s until Redis confirms it (%s)", model, entry.revision, entry.action,
            memory.file(model), exc,
        )  # fmt: skip

    def _settle_routing(self) -> None:
        """Show whether routing is confirmed (gauge) and known (readiness); while it is not,
        ask Redis in the background until it answers."""
        self.metrics.routing_stale = bool(self._stale)
        self.service.ready = not self._unknown
        if self._unknown:
            self.service.unready_reason = (
                f"the routing of {', '.join(sorted(self._unknown))} is unknown until Redis answers"
            )
        if (self._stale or self._unknown) and (self._settling is None or self._settling.done()):
            self._settling = asyncio.create_task(self._await_store())

    async def _await_store(self) -> None:
        while self._stale or self._unknown:
            try:
                await self._confirm_routing()
            except Unavailable:
                await asyncio.sleep(STORE_RETRY_S)
            except Exception:  # not Redis being down: say so, and keep trying
                log.exception("cannot confirm the routing with Redis")
                await asyncio.sleep(STORE_RETRY_S)

    async def _confirm_routing(self) -> None:
        """Confirm last-known routing with the store; adopt (or seed) routing still unknown."""
        for model, served in list(self._stale.items()):
            if model in self.repository.models:  # a reload may have dropped it meanwhile
                stored = await self.control.confirm(model, served)
                log.info(
                    "Redis answers: routing of %s confirmed; stored revision %d, last-known %d",
                    model, stored.revision, served.revision,
                )  # fmt: skip
            del self._stale[model]
            self._settle_routing()
        for model, initial in list(self._unknown.items()):
            if model in self.repository.models:
                await self.control.adopt(model, initial)
                revision = self.service.table.get(model).revision
                log.info("Redis answers: serving the routing of %s, revision %d", model, revision)
            del self._unknown[model]
            self._settle_routing()

    def _variants(self, model: str) -> Collection[str]:
        return self.repository.variants(model).keys()

    def _publish_routing(self, model: str, state: RoutingState) -> None:
        variants = self.repository.models.get(model, {})
        self.metrics.set_routing(model, state, variants)

    def _last_known(self) -> LastKnownRouting | None:
        """Embedded mode keeps its whole store on local disk already."""
        if self.settings.redis_url is None:
            return None
        return LastKnownRouting(self.settings.data_dir / "last-known")

    def _store(self) -> RoutingStore:
        if self.settings.redis_url is None:
            return EmbeddedStore(self.settings.data_dir / "routing")
        import redis.asyncio as aioredis  # only with Redis: it adds about 22 MB to a worker

        from gateway.control.redis_store import RedisStore

        self._redis = aioredis.Redis.from_url(
            self.settings.redis_url, socket_timeout=2.0, socket_connect_timeout=1.0
        )
        return RedisStore(self._redis)

    def _plans(self) -> dict[str, RolloutPlan]:
        return {name: m.rollout for name, m in self.settings.models.items() if m.rollout}

    def _rollout_store(self) -> RolloutStore:
        if self._redis is None:
            return EmbeddedRollouts(self.settings.data_dir / "rollouts")
        return RedisRollouts(self._redis)

    def _sink(self) -> ShadowSink:
        if self.settings.redis_url is None:
            return JsonLinesSink(self.settings.data_dir / "shadow")
        return RedisStreamSink(self.settings.redis_url, self.settings.shadow_log_maxlen)


def queue_policies(settings: Settings) -> dict[tuple[str, str], QueuePolicy]:
    """Each variant's queue policy, from its config (README "Batching and admission")."""
    return {
        (model, name): QueuePolicy(
            variant.max_batch_size,
            variant.max_queue_delay_us / 1e6,
            variant.preferred_batch_size,
            variant.max_queue_size,
        )
        for model, config in settings.models.items()
        for name, variant in config.variants.items()
    }


def _max_batch_sizes(settings: Settings) -> dict[tuple[str, str], int]:
    return {key: policy.max_batch_size for key, policy in queue_policies(settings).items()}


def _initial_states(settings: Settings) -> dict[str, RoutingState]:
    return {name: RoutingState.from_config(m.routing) for name, m in settings.models.items()}


def _sessions(repository: ModelRepository) -> set[ModelSession]:
    return {session for variants in repository.models.values() for session in variants.values()}
