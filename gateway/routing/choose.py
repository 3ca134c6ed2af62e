"""Choosing a variant: O(1), no I/O, the same answer for a sticky user everywhere."""

import hashlib
import random

from gateway.routing.state import Route, RoutingState, Shadow

_SCALE = float(2**64)


def sticky_fraction(model: str, key: str) -> float:
    """A stable point in [0, 1) for (model, key): the same in every process and after restarts.

    Python's hash() is salted per process, so a keyed blake2b digest is used instead. Comparing
    the point with the canary weight makes raising the weight only move users to the canary.
    """
    digest = hashlib.blake2b(f"{model}\x00{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / _SCALE


def choose_variant(
    model: str, state: RoutingState, sticky_key: str | None, draw: float | None = None
) -> Route:
    """Route one request: to the canary with probability `weight`, else to live."""
    canary = state.canary
    if canary is None or canary.weight <= 0.0:
        return state.live_route
    if sticky_key is not None:
        point = sticky_fraction(model, sticky_key)
    else:
        point = random.random() if draw is None else draw
    route = state.canary_route
    if point < canary.weight and route is not None:  # not None: the state has a canary
        return route
    return state.live_route


def sample_shadows(shadows: tuple[Shadow, ...]) -> list[Shadow]:
    """The shadows that receive a copy of this request, each drawn with its own `sample`."""
    return [shadow for shadow in shadows if random.random() < shadow.sample]
