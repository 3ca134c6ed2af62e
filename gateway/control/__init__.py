"""The control plane: routing state, revisions, history, rollback and change propagation."""

from gateway.control.embedded import EmbeddedStore
from gateway.control.last_known import LastKnownRouting
from gateway.control.plane import ControlPlane
from gateway.control.store import HistoryEntry, RoutingStore

__all__ = [
    "ControlPlane",
    "EmbeddedStore",
    "HistoryEntry",
    "LastKnownRouting",
    "RoutingStore",
]
