"""Pure routing: canary weights, sticky hashing, blue-green, shadow sampling.

README: "Shipping new versions: canary, shadow, blue-green, rollback".
"""

from gateway.routing.choose import choose_variant, sample_shadows, sticky_fraction
from gateway.routing.state import Canary, Route, RoutingState, Shadow
from gateway.routing.table import RoutingTable

__all__ = [
    "Canary",
    "Route",
    "RoutingState",
    "RoutingTable",
    "Shadow",
    "choose_variant",
    "sample_shadows",
    "sticky_fraction",
]
