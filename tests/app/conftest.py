"""In-process app fixtures: the real app and lifespan, driven through httpx's ASGI transport."""

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

from gateway.http import create_app
from gateway.settings import load_settings

AppClient = Callable[..., Any]


@pytest.fixture
async def make_client(write_config: Callable[..., Path]) -> AsyncIterator[AppClient]:
    """Factory: an httpx client on a fresh app (config overrides as keyword arguments), served
    under `root_path` when given, as behind a proxy that strips a prefix."""
    stack: list[Any] = []

    async def make(
        token: str | None = "secret", root_path: str = "", **overrides: Any
    ) -> httpx.AsyncClient:
        env = {"GATEWAY_ADMIN_TOKEN": token} if token is not None else {}
        app = create_app(
            load_settings(write_config(**overrides), env=env), registry=CollectorRegistry()
        )
        lifespan = app.router.lifespan_context(app)
        await lifespan.__aenter__()
        transport = httpx.ASGITransport(app=app, root_path=root_path)
        client = httpx.AsyncClient(transport=transport, base_url=f"http://gw{root_path}")
        stack.append((client, lifespan))
        return client

    yield make
    for client, lifespan in reversed(stack):
        await client.aclose()
        await lifespan.__aexit__(None, None, None)


@pytest.fixture
async def client(make_client: AppClient) -> httpx.AsyncClient:
    result: httpx.AsyncClient = await make_client()
    return result
