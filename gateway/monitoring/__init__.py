"""Model monitoring: live profiles, drift against a reference, online metrics from feedback."""

from gateway.monitoring.monitor import Feedback, Monitor

__all__ = ["Feedback", "Monitor"]
