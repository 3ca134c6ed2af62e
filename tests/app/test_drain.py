"""The drain in-process (README "Graceful shutdown"): readiness says so, every other route serves."""

import signal
from collections.abc import Callable
from pathlib import Path

import httpx
from prometheus_client import CollectorRegistry
from support import iris_body

from gateway.http import create_app
from gateway.http.drain import Drain
from gateway.settings import load_settings


async def test_draining_turns_readiness_503_and_serves_every_other_route(
    write_config: Callable[..., Path],
) -> None:
    """While draining, ready routes answer 503 saying so; inference, metadata, liveness and
    metrics answer as before."""
    app = create_app(load_settings(write_config()), registry=CollectorRegistry())
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            assert (await client.get("/v2/health/ready")).status_code == 200
            app.drain.draining = True
            for path in ["/v2/health/ready", "/v2/models/iris/ready",
                         "/v2/models/iris/versions/green/ready"]:  # fmt: skip
                answer = await client.get(path)
                assert answer.status_code == 503 and "draining" in answer.json()["error"], path
            infer = await client.post("/v2/models/iris/infer", json=iris_body())
            assert infer.status_code == 200
            for path in ["/v2/health/live", "/v2/models/iris", "/metrics"]:
                assert (await client.get(path)).status_code == 200, path


async def test_sigterm_is_left_alone_outside_uvicorn() -> None:
    """Not served by uvicorn's Server (here: a test's event loop), the drain does not take
    SIGTERM over: nothing could end the drain."""
    before = signal.getsignal(signal.SIGTERM)
    drain = Drain(1.0)
    assert drain.take_over_sigterm() is False
    assert signal.getsignal(signal.SIGTERM) is before
    drain.give_back_sigterm()
    assert signal.getsignal(signal.SIGTERM) is before
