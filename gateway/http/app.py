"""The composition root: `create_app` builds the Starlette app from an explicit route table."""

import contextlib
import os
from collections.abc import AsyncIterator

from prometheus_client import CollectorRegistry
from starlette.applications import Starlette

from gateway.http import admin, endpoints
from gateway.http.responses import EXCEPTION_HANDLERS
from gateway.lifecycle import Gateway
from gateway.runtime import ModelRepository
from gateway.settings import DEFAULT_CONFIG, Settings, load_settings


def create_app(
    settings: Settings,
    repository: ModelRepository | None = None,
    registry: CollectorRegistry | None = None,
) -> Starlette:
    """The gateway as an ASGI app. Models load in the lifespan unless `repository` is given."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        gateway = Gateway(settings, registry or CollectorRegistry(), repository)
        app.state.metrics = gateway.metrics
        app.state.service = await gateway.start()
        app.state.gateway = gateway
        try:
            yield
        finally:
            await gateway.stop()

    app = Starlette(
        routes=[*endpoints.ROUTES, *admin.ROUTES],
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=lifespan,
    )
    app.state.settings = settings
    return app


def app_from_env() -> Starlette:
    """Factory for uvicorn workers: `gateway serve` passes the config file in GATEWAY_CONFIG."""
    return create_app(load_settings(os.environ.get("GATEWAY_CONFIG", DEFAULT_CONFIG)))
