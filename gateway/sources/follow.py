"""Follow `models:/NAME@ALIAS` variants as their aliases move (README "Sources and sinks").

Every `mlflow_poll_s`, each worker asks the registry where each alias of the variants it serves
points (one call per alias variant, on a thread). A move to another version is downloaded into
the cache, then, as the variant's `on_alias_change` says, the variant is reloaded in place
(`Gateway.reload` with the moved sources: loaded and warmed before the switch, so no request
fails) or reloaded and then shipped by the model's rollout plan (`RolloutController.begin`). Every
worker polls on its own, so each ends up serving the new version within a poll of the move. A
rollout is begun once: a worker that finds the model's rollout already begun for this version
(by another worker or replica) leaves it, and the rollout store's compare-and-set refuses a
second begin made at the same moment.

A registry that cannot be asked changes nothing that is served: the outage is logged once, and
every failed ask counts in `gateway_model_source_errors_total{model,variant}`; the variant's
problem, if any, is in its `sources` entry of `GET /admin/models/{model}`.
"""

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

from gateway.errors import ConfigError, Conflict, NotFound, Unavailable
from gateway.settings import Settings
from gateway.sources.mlflow_registry import (
    MlflowRegistry,
    RegistryError,
    RegistryUnreachable,
)
from gateway.sources.resolve import Key, ResolvedSource, registry

if TYPE_CHECKING:
    from gateway.control import ControlPlane
    from gateway.metrics import Metrics
    from gateway.rollout.controller import RolloutController
    from gateway.rollout.record import Rollout
    from gateway.runtime import ModelRepository

log = logging.getLogger(__name__)


class Followed(Protocol):
    """What the follower needs of the running gateway (gateway.lifecycle.Gateway)."""

    settings: Settings
    repository: "ModelRepository"
    control: "ControlPlane"
    metrics: "Metrics"
    rollouts: "RolloutController"

    async def reload(
        self, announce: bool = True, moved: Mapping[Key, ResolvedSource] | None = None
    ) -> list[str]: ...


class AliasFollower:
    """Polls the registry for the gateway's alias variants and follows their moves."""

    def __init__(self, gateway: Followed) -> None:
        self._gateway = gateway
        self.problems: dict[Key, str] = {}  # each variant's current problem, shown and logged once
        self._outage: str | None = None  # the registry's, logged once
        self._failed: dict[Key, str] = {}  # the version each variant failed to load, not retried
        self._rollouts: dict[Key, ResolvedSource] = {}  # rollouts to begin (Redis was down)
        self._link: MlflowRegistry | None = None
        self._errors = gateway.metrics.add_counter(
            "gateway_model_source_errors",
            "Failed asks of the MLflow registry for a variant's version, or versions that "
            "could not be fetched or loaded.",
            ["model", "variant"],
        )
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        for key, source in self._gateway.repository.sources.items():
            self._errors.slot(key)  # series from 0 (a reload's new variants: at the next poll)
            if source.cached_only:
                self.problems[key] = f"the registry was not answering at start-up: {source.uri} "
                self.problems[key] += f"serves version {source.version}, from the cache"
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def describe(self, model: str) -> dict[str, dict[str, Any]]:
        """`model`'s registry variants: URI, version served and current problem (or null)."""
        return {
            variant: {
                "uri": source.uri,
                "version": source.version,
                "error": self.problems.get((name, variant)),
            }
            for (name, variant), source in sorted(self._gateway.repository.sources.items())
            if name == model
        }

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._gateway.settings.mlflow_poll_s)
            try:
                await self.poll()
            except Exception:  # a bug here must not end the polling
                log.exception("following the MLflow registry's aliases failed")

    async def poll(self) -> None:
        """Ask where every alias points; follow the moves; begin rollouts still to begin."""
        sources = self._gateway.repository.sources
        moved: dict[Key, ResolvedSource] = {}
        for key, served in sources.items():
            self._errors.slot(key)  # every series from 0, so the first error is an increase
            if served.parsed.alias is not None:
                found = await self._ask(key, served)
                if found is not None and self._loadable(key, found):
                    moved[key] = found
        if moved:
            await self._follow(moved)
        for key, source in list(self._rollouts.items()):
            with contextlib.suppress(Unavailable):  # Redis is down: begin at the next poll
                await self._roll_out(key, source)
                del self._rollouts[key]

    async def _ask(self, key: Key, served: ResolvedSource) -> ResolvedSource | None:
        """The alias's version if it moved (fetched into the cache), else None."""
        link = self._registry()
        uri = served.parsed
        try:
            version = await asyncio.to_thread(link.version_of, uri)
            if version == served.version:
                self._fine(key)
                return None
            if self._failed.get(key) == version:  # its problem stands until the alias moves
                self._answered()
                return None
            path = await asyncio.to_thread(link.fetch, uri, version)
        except RegistryUnreachable as exc:
            self._unreachable(key, str(exc))
            return None
        except (RegistryError, ConfigError) as exc:
            self._problem(key, str(exc))
            return None
        self._fine(key)
        return ResolvedSource(served.uri, version, path)

    def _loadable(self, key: Key, found: ResolvedSource) -> bool:
        """A rollout ships a variant that is not live: a live one is not reloaded under it."""
        model, variant = key
        if self._mode(key) != "rollout" or self._gateway.control.table.get(model).live != variant:
            return True
        self._problem(
            key,
            f"{found.uri} is at version {found.version}, not loaded: {variant!r} is live and "
            "on_alias_change is rollout, which ships a variant that is not live",
        )
        return False

    async def _follow(self, moved: dict[Key, ResolvedSource]) -> None:
        for key, source in moved.items():  # the old version's rollout ends before the switch
            if self._mode(key) == "rollout":
                await self._end_stale_rollout(key, source)
        try:
            await self._gateway.reload(announce=False, moved=moved)
        except Conflict as exc:  # the new version cannot be served: keep the old one
            for key, source in moved.items():
                self._failed[key] = source.version
                self._problem(key, f"version {source.version} not loaded: {exc.message}")
            return
        for key, source in moved.items():
            log.info("model %s variant %s serves %s, version %s", *key, source.uri, source.version)
            self.problems.pop(key, None)
            if self._mode(key) == "rollout":
                self._rollouts[key] = source

    async def _end_stale_rollout(self, key: Key, source: ResolvedSource) -> None:
        record = await self._gateway.rollouts.store.get(key[0])
        if record and record.active and record.plan.variant == key[1]:
            with contextlib.suppress(Conflict):
                if not _begun_for(record, key, source):
                    await self._gateway.rollouts.abort(key[0])

    async def _roll_out(self, key: Key, source: ResolvedSource) -> None:
        """Begin the model's rollout plan of the variant, unless begun for this version."""
        rollouts = self._gateway.rollouts
        if _begun_for(await rollouts.store.get(key[0]), key, source):
            log.info("model %s: the rollout of %s was begun already (%s)", *key, _moved(source))
            return  # by another worker or replica
        try:  # the config's plan, which ships this variant (settings validation)
            await rollouts.begin(key[0], None, f"because {_moved(source)}")
        except (Conflict, NotFound) as exc:
            log.warning("model %s: no rollout of %s for version %s: %s", *key, source.version, exc)
            return
        log.info("model %s: began the rollout of %s (%s)", *key, _moved(source))

    def _mode(self, key: Key) -> str:
        model = self._gateway.settings.models.get(key[0])
        variant = model.variants.get(key[1]) if model else None
        return variant.on_alias_change if variant else "reload"

    def _registry(self) -> MlflowRegistry:
        settings = self._gateway.settings
        link = self._link
        if link is None or link.tracking_uri != settings.mlflow_tracking_uri:
            link = self._link = registry(settings)
        return link

    def _unreachable(self, key: Key, error: str) -> None:
        self._errors.inc(key)
        if self._outage is None:
            log.warning(
                "the MLflow registry cannot be asked; serving the versions loaded, asking "
                "again every %g s: %s", self._gateway.settings.mlflow_poll_s, error,
            )  # fmt: skip
        self._outage = self.problems[key] = f"the registry cannot be asked: {error}"

    def _problem(self, key: Key, message: str) -> None:
        self._errors.inc(key)
        if self.problems.get(key) != message:
            log.error("model %s variant %s: %s", *key, message)
        self.problems[key] = message

    def _fine(self, key: Key) -> None:
        self._answered()
        self.problems.pop(key, None)

    def _answered(self) -> None:
        if self._outage is not None:
            log.info("the MLflow registry answers again")
            self._outage = None


def _moved(source: ResolvedSource) -> str:
    return f"{source.uri} moved to version {source.version}"


def _begun_for(record: "Rollout | None", key: Key, source: ResolvedSource) -> bool:
    """Whether `record` is a rollout of the variant begun for `source`'s version (its first
    decision says so)."""
    if record is None or record.plan.variant != key[1] or not record.decisions:
        return False
    return _moved(source) in record.decisions[0].reason
