"""The routing snapshot of one model: frozen, swapped whole, never changed in place."""

from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple, Self

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


class Route(NamedTuple):
    """The variant chosen for one request, its role and revision, and the shadows to mirror to
    (all from the one RoutingState the request was routed with)."""

    variant: str
    role: str
    revision: int
    shadows: tuple[Shadow, ...] = ()


@dataclass(frozen=True, slots=True)
class RoutingState:
    """Where one model's requests go at one revision (README: "Shipping new versions")."""

    live: str
    canary: Canary | None = None
    sticky_header: str | None = None
    shadows: tuple[Shadow, ...] = ()
    revision: int = 1
    # The routes `choose_variant` answers, made with the state rather than for every request
    # (docs/lone-request.md); derived, so neither compared nor shown.
    live_route: Route = field(init=False, compare=False, repr=False)
    canary_route: Route | None = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        revision, shadows, canary = self.revision, self.shadows, self.canary
        live = Route(self.live, "live", revision, shadows)
        to_canary = None if canary is None else Route(canary.variant, "canary", revision, shadows)
        object.__setattr__(self, "live_route", live)  # frozen: set once, here
        object.__setattr__(self, "canary_route", to_canary)

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
