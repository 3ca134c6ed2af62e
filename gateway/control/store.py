"""What a routing store keeps: per model, an append-only history whose last entry is current."""

import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol, Self

from gateway.routing import RoutingState

OnReload = Callable[[], Awaitable[None]]
ModelNames = Callable[[], Iterable[str]]


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One revision: what changed (`action`), when (unix seconds) and the resulting state; a
    rollout's decision also carries its `analysis` (README "Rollouts")."""

    revision: int
    action: str
    time: float
    state: RoutingState
    analysis: dict[str, Any] | None = None

    @classmethod
    def new(cls, action: str, state: RoutingState, analysis: dict[str, Any] | None = None) -> Self:
        return cls(state.revision, action, round(time.time(), 3), state, analysis)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        return cls(
            int(data["revision"]),
            str(data["action"]),
            float(data["time"]),
            RoutingState.from_dict(data["state"]),
            data.get("analysis"),
        )

    def to_dict(self) -> dict[str, Any]:
        data = {
            "revision": self.revision,
            "action": self.action,
            "time": self.time,
            "state": self.state.to_dict(),
        }
        if self.analysis is not None:
            data["analysis"] = self.analysis
        return data


OnChange = Callable[[str, HistoryEntry], None]


class RoutingStore(Protocol):
    """Durable routing state. `append` is a compare-and-set: it fails with Conflict unless the
    stored current revision is still `expected` (0: nothing stored), i.e. nobody else wrote
    since the change was computed."""

    async def current(self, model: str) -> HistoryEntry | None: ...

    async def history(self, model: str) -> list[HistoryEntry]: ...

    async def append(self, model: str, entry: HistoryEntry, expected: int) -> None: ...

    async def open(self) -> None: ...

    async def announce_reload(self) -> None: ...

    async def watch(self, models: ModelNames, on_change: OnChange, on_reload: OnReload) -> None:
        """Call `on_change` for every change made elsewhere until cancelled."""

    async def close(self) -> None: ...
