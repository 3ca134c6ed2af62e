"""Routing changes: validate, append a revision, install, propagate (README "Shipping").

Every change is computed from the store's current entry, not from this process's table, so
workers and replicas never overwrite each other: the store's append is a compare-and-set on the
revision. The changing process installs the new state at once; the others get it from the store's
watch. Invalid changes raise before anything is written. Each newer revision installed is also
remembered on local disk (LastKnownRouting), for a start-up while the store is unreachable.
"""

import asyncio
import contextlib
import logging
from collections.abc import Callable, Collection, Mapping
from dataclasses import replace
from typing import Any

from gateway.control.last_known import LastKnownRouting
from gateway.control.store import HistoryEntry, OnReload, RoutingStore
from gateway.errors import BadRequest, Conflict, NotFound
from gateway.routing import Canary, RoutingState, RoutingTable, Shadow

log = logging.getLogger(__name__)

Change = Callable[[RoutingState], RoutingState]
Variants = Callable[[str], Collection[str]]


class ControlPlane:
    """Applies admin changes to a RoutingStore and keeps the local RoutingTable in step."""

    def __init__(
        self,
        store: RoutingStore,
        table: RoutingTable,
        variants: Variants,
        on_install: Callable[[str, RoutingState], None] = lambda model, state: None,
        last_known: LastKnownRouting | None = None,
    ) -> None:
        self.store = store
        self.table = table
        self._variants = variants
        self._on_install = on_install
        self.last_known = last_known
        self._watch: asyncio.Task[None] | None = None

    async def start(self, initial: Mapping[str, RoutingState]) -> None:
        """Adopt the stored routing of each model, or store `initial` for models new to it."""
        for model, state in initial.items():
            await self.adopt(model, state)

    def watch(self, on_reload: OnReload) -> None:
        """Follow changes made by other workers and replicas in the background."""
        self._watch = asyncio.create_task(
            self.store.watch(lambda: list(self.table.all()), self.install, on_reload)
        )

    async def stop(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        await self.store.close()
        if self.last_known is not None:
            await self.last_known.close()

    async def adopt(self, model: str, initial: RoutingState) -> None:
        """Serve the stored state of `model` (a restart is not a routing change) or store
        `initial` as revision 1. A stored state naming variants that are gone is replaced."""
        entry = await self.store.current(model)
        if entry is None or not self._valid(model, entry.state):
            if entry is not None:
                log.warning("stored routing of %s names removed variants; using the config", model)
            revision = entry.revision if entry else 0
            new = HistoryEntry.new("config" if entry else "init", initial.at(revision + 1))
            try:
                await self.store.append(model, new, expected=revision)
                entry = new
            except Conflict:
                # Another worker or replica starting at the same time got there first.
                entry = await self.store.current(model)
        if entry is not None:
            self.install(model, entry)

    def recall(self, model: str) -> HistoryEntry | None:
        """The model's last-known entry, if there is one and its variants are still loaded."""
        entry = None if self.last_known is None else self.last_known.load(model)
        if entry is not None and not self._valid(model, entry.state):
            log.warning("last-known routing of %s names removed variants; not using it", model)
            return None
        return entry

    async def confirm(self, model: str, served: HistoryEntry) -> HistoryEntry:
        """Read the stored routing of a model served from `served` (its last-known entry) and
        install it; a store that has none (it lost its data) gets `served` back as its head."""
        entry = await self.store.current(model)
        if entry is None:
            try:
                await self.store.append(model, served, expected=0)
                entry = served
                log.warning(
                    "the routing store had no routing of %s: stored the last-known revision %d "
                    "back", model, served.revision,
                )  # fmt: skip
            except Conflict:  # another worker or replica put one there first
                entry = await self.store.current(model)
        if entry is None:
            return served
        self.install(model, entry)
        return entry

    def install(self, model: str, entry: HistoryEntry) -> None:
        """Make `entry`'s state the one requests read (ignored if not newer than the current)."""
        current = self.table.all().get(model)
        state = entry.state
        if current is not None and state.revision <= current.revision:
            return
        self.table.install(model, state)
        self._on_install(model, state)
        if self.last_known is not None:
            self.last_known.remember(model, entry)

    async def history(self, model: str) -> list[HistoryEntry]:
        self.table.get(model)
        return await self.store.history(model)

    async def set_canary(self, model: str, variant: str, weight: float) -> RoutingState:
        """Start a canary or change its weight."""
        self._check_variant(model, variant)
        if not 0.0 <= weight <= 1.0:
            raise BadRequest(f"canary weight must be between 0 and 1, got {weight}")

        def change(state: RoutingState) -> RoutingState:
            if variant == state.live:
                raise Conflict(f"{variant!r} is live already; a canary must be another variant")
            return replace(state, canary=Canary(variant, weight))

        return await self._change(model, f"canary {variant} {weight:g}", change)

    async def abort_canary(self, model: str) -> RoutingState:
        """Send every request to live again and forget the canary."""

        def change(state: RoutingState) -> RoutingState:
            if state.canary is None:
                raise Conflict(f"model {model!r} has no canary to abort")
            return replace(state, canary=None)

        return await self._change(model, "abort", change)

    async def promote(self, model: str) -> RoutingState:
        """Make the canary live and remove it."""

        def change(state: RoutingState) -> RoutingState:
            if state.canary is None:
                raise Conflict(f"model {model!r} has no canary to promote")
            return replace(state, live=state.canary.variant, canary=None)

        return await self._change(model, "promote", change)

    async def flip(self, model: str, variant: str) -> RoutingState:
        """Blue-green: make `variant` live in one step (a canary of it is absorbed)."""
        self._check_variant(model, variant)

        def change(state: RoutingState) -> RoutingState:
            if variant == state.live:
                raise Conflict(f"{variant!r} is live already")
            canary = state.canary if state.canary and state.canary.variant != variant else None
            return replace(state, live=variant, canary=canary)

        return await self._change(model, f"flip {variant}", change)

    async def set_shadows(self, model: str, shadows: list[Shadow]) -> RoutingState:
        """Replace the set of shadows."""
        for shadow in shadows:
            self._check_variant(model, shadow.variant)
            if not 0.0 <= shadow.sample <= 1.0:
                raise BadRequest(f"shadow sample must be between 0 and 1, got {shadow.sample}")
        if len({shadow.variant for shadow in shadows}) != len(shadows):
            raise BadRequest("a variant may appear only once among the shadows")
        names = ",".join(shadow.variant for shadow in shadows) or "none"
        return await self._change(
            model, f"shadows {names}", lambda state: replace(state, shadows=tuple(shadows))
        )

    async def rollback(self, model: str, to_revision: int | None = None) -> RoutingState:
        """Restore the state of revision current-1 (or `to_revision`) as a new revision."""
        history = {entry.revision: entry.state for entry in await self.history(model)}
        current = max(history, default=0)
        target = current - 1 if to_revision is None else to_revision
        if to_revision is None and target not in history:
            raise Conflict(f"model {model!r} has no earlier revision to roll back to")
        if target not in history:
            raise NotFound(f"model {model!r} has no revision {target} (kept: {sorted(history)})")
        if target == current:
            raise Conflict(f"revision {target} is the current revision already")
        restored = history[target]
        if not self._valid(model, restored):
            raise Conflict(f"revision {target} names variants that are no longer loaded")
        return await self._change(model, f"rollback {target}", lambda state: restored)

    async def apply(
        self, model: str, action: str, routing: RoutingState, analysis: dict[str, Any]
    ) -> RoutingState:
        """Route as `routing` says (its revision is ignored) in a new revision that carries a
        rollout's `analysis`, even when the routing stays the same (README "Rollouts")."""
        for variant in routing.variants():
            self._check_variant(model, variant)
        return await self._change(model, action, lambda state: routing, analysis)

    async def _change(
        self, model: str, action: str, change: Change, analysis: dict[str, Any] | None = None
    ) -> RoutingState:
        local = self.table.get(model)  # NotFound for unknown models before touching the store
        entry = await self.store.current(model)
        # A store that lost its data (a Redis without persistence) continues from what we serve.
        base, expected = (entry.state, entry.revision) if entry else (local, 0)
        new = change(base).at(max(base.revision, local.revision) + 1)
        head = HistoryEntry.new(action, new, analysis)
        await self.store.append(model, head, expected)
        self.install(model, head)
        log.info("routing of %s is now revision %d: %s", model, new.revision, action)
        return new

    def variants(self, model: str) -> Collection[str]:
        """The loaded variants of `model`."""
        return self._variants(model)

    def _check_variant(self, model: str, variant: str) -> None:
        self.table.get(model)  # NotFound for an unknown model first
        known = self._variants(model)
        if variant not in known:
            raise NotFound(
                f"model {model!r} has no variant {variant!r}; its variants are {sorted(known)}"
            )

    def _valid(self, model: str, state: RoutingState) -> bool:
        return state.variants() <= set(self._variants(model))
