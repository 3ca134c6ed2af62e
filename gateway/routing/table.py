"""The routing table every request reads: one frozen RoutingState per model."""

from collections.abc import Mapping

from gateway.errors import NotFound
from gateway.routing.state import RoutingState


class RoutingTable:
    """Per-model routing snapshots. A change swaps the whole mapping in one assignment, so a
    request that has read a state keeps a consistent one while the control plane moves on."""

    def __init__(self, states: Mapping[str, RoutingState]) -> None:
        self._states = dict(states)

    def get(self, model: str) -> RoutingState:
        """The current state of `model`; NotFound if the gateway does not serve it."""
        try:
            return self._states[model]
        except KeyError:
            raise NotFound(
                f"unknown model {model!r}; served models: {sorted(self._states)}"
            ) from None

    def all(self) -> Mapping[str, RoutingState]:
        return self._states

    def install(self, model: str, state: RoutingState) -> None:
        """Make `state` current for `model` (a newer revision only wins over an older one)."""
        current = self._states.get(model)
        if current is None or state.revision >= current.revision:
            self._states = {**self._states, model: state}

    def replace_all(self, states: Mapping[str, RoutingState]) -> None:
        """Swap in a whole new set of models (after a config reload)."""
        self._states = dict(states)
