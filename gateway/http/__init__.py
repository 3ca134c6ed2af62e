"""The Starlette application: the only layer that knows about HTTP."""

from gateway.http.app import create_app

__all__ = ["create_app"]
