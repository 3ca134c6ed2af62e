"""The routing snapshot of one model: frozen, swapped whole, never changed in place."""

from dataclasses import dataclass, replace
from typing import Any, Self

from gateway.settings import RoutingConfig


@dataclass(frozen=True, slots=True)
class Canary:
    """A variant that takes `weight` of routed requests."""

    variant: str
    weight: float


@dataclass(frozen=True, slots=True)
class Shadow:
    """A variant that sees `sample` of routed requests; its answers are only logged."""

    variant: str
    sample: float


@dataclass(frozen=True, slots=True)
class RoutingState:
    """Where one model's requests go at one revision (README: "Shipping new versions")."""

    live: str
    canary: Canary | None = None
    sticky_header: str | None = None
    shadows: tuple[Shadow, ...] = ()
    revision: int = 1

    @classmethod
    def from_config(cls, config: RoutingConfig) -> Self:
        canary = config.canary
        return cls(
            live=config.live,
            canary=Canary(canary.variant, canary.weight) if canary else None,
            sticky_header=config.sticky_header,
            shadows=tuple(Shadow(s.variant, s.sample) for s in config.shadows),
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        canary = data.get("canary")
        return cls(
            live=data["live"],
            canary=Canary(canary["variant"], float(canary["weight"])) if canary else None,
            sticky_header=data.get("sticky_header"),
            shadows=tuple(Shadow(s["variant"], float(s["sample"])) for s in data["shadows"]),
            revision=int(data["revision"]),
        )

    def to_dict(self) -> dict[str, Any]:
        """The JSON form used by the admin API, the history and the state stores."""
        return {
            "revision": self.revision,
            "live": self.live,
            "canary": (
                {"variant": self.canary.variant, "weight": self.canary.weight}
                if self.canary
                else None
            ),
            "sticky_header": self.sticky_header,
            "shadows": [{"variant": s.variant, "sample": s.sample} for s in self.shadows],
        }

    def variants(self) -> set[str]:
        """Every variant this state routes to or mirrors."""
        named = {self.live, *(shadow.variant for shadow in self.shadows)}
        if self.canary is not None:
            named.add(self.canary.variant)
        return named

    def at(self, revision: int) -> "RoutingState":
        """The same routing under another revision number."""
        return replace(self, revision=revision)

    def same_routing(self, other: "RoutingState") -> bool:
        """Whether both send traffic the same way, whatever their revisions."""
        return self.at(0) == other.at(0)
