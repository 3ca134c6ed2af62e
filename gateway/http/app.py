"""The composition root: `create_app` builds the Starlette app from an explicit route table."""

import asyncio
import contextlib
import gc
import os
from collections.abc import AsyncIterator, Collection
from typing import Any

from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.routing import Route

from gateway.grpc import DEFAULT_HOST, GrpcBinding
from gateway.http import admin, endpoints, monitoring, rollout
from gateway.http.accept import Acceptor
from gateway.http.body import Receive
from gateway.http.door import Door
from gateway.http.drain import Drain
from gateway.http.inference import InferenceEndpoint, Scope, Send
from gateway.http.responses import EXCEPTION_HANDLERS
from gateway.lifecycle import Gateway
from gateway.runtime import ModelRepository
from gateway.service import InferenceService
from gateway.settings import DEFAULT_CONFIG, Settings, load_settings
from gateway.tracing import Tracing

# What `gateway consume` serves over HTTP: probes and metrics, no data plane.
CONSUMER_PATHS = frozenset({"/v2/health/live", "/v2/health/ready", "/metrics"})


class GatewayApp(Starlette):
    """Starlette, with one shortcut: a POST to an inference route goes straight to its endpoint.

    Starlette's middleware stack and router cost about 80 Python lines a request, a fifth of a
    small model's whole request, and the inference endpoints need none of it: they answer every
    error, expected or not, themselves. The inference routes stay in the router as well, which
    serves what the shortcut leaves (other methods: 405; an app mounted under a root_path), so
    the shortcut changes the speed of a request, never its answer.

    What the endpoints need lives in plain attributes rather than Starlette's `app.state`, whose
    every read first fails an ordinary attribute lookup (an AttributeError built and dropped).
    """

    settings: Settings
    drain: Drain  # SIGTERM's drain (README "Graceful shutdown")
    gateway: Gateway | None = None  # from the start of the lifespan: /metrics works meanwhile
    service: InferenceService | None = None  # once the models are loaded
    tracing: Tracing | None = None  # OpenTelemetry, when otel_endpoint is set (README "Tracing")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._shortcuts = [
            (route.path_regex, route.endpoint)
            for route in self.routes
            if isinstance(route, Route) and isinstance(route.endpoint, InferenceEndpoint)
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and not scope.get("root_path"):
            found = self.inference_endpoint(scope["path"])
            if found is not None:
                scope["app"] = self
                scope["path_params"] = found[1]
                await found[0](scope, receive, send)
                return
        await super().__call__(scope, receive, send)

    def inference_endpoint(self, path: str) -> tuple[InferenceEndpoint, dict[str, str]] | None:
        """The inference endpoint a POST to `path` goes to, and its path parameters."""
        for path_regex, endpoint in self._shortcuts:
            match = path_regex.match(path)
            if match is not None:
                return endpoint, match.groupdict()
        return None


def create_app(
    settings: Settings,
    repository: ModelRepository | None = None,
    registry: CollectorRegistry | None = None,
    consumers: Collection[str] | None = None,
    grpc_binding: GrpcBinding | None = None,
    tracing: Tracing | None = None,
) -> GatewayApp:
    """The gateway as an ASGI app. Models load in the lifespan unless `repository` is given.

    With `consumers` (`gateway consume`): those event-stream consumers run (all when empty),
    and the app serves only health and /metrics, with no drain on SIGTERM. Otherwise, with
    `grpc_port` set, the lifespan also serves gRPC on `grpc_binding`'s host (README "gRPC").
    `tracing`: where spans go (tests: an in-memory exporter); by default OTLP to
    `otel_endpoint` when it is set, else no tracing.
    """

    @contextlib.asynccontextmanager
    async def lifespan(app: GatewayApp) -> AsyncIterator[dict[str, Any]]:
        # SIGTERM drains from the first moment on, so it always ends in the same clean exit.
        app.drain.take_over_sigterm()
        try:
            app.gateway = gateway = Gateway(
                settings, registry or CollectorRegistry(), repository, consumers
            )
            if tracing is not None or settings.otel_endpoint is not None:
                app.tracing = tracing or Tracing.exporting_to(str(settings.otel_endpoint))
            app.service = await gateway.start()
            # What start-up made (modules, sessions, settings) lives as long as the process:
            # out of the collector's sight, a full collection under load scans what requests
            # made, not all of it (40 ms a pass with the heavy model loaded, a stall of the
            # event loop; Python's gc.freeze docs).
            gc.collect()
            gc.freeze()
            try:
                binding = grpc_binding or GrpcBinding()
                acceptor = Acceptor()
                app.drain.at_end(acceptor.close)  # stop accepting with uvicorn, not after it
                async with _grpc_face(app, gateway, binding, consumers is None):
                    # Lifespan state: uvicorn hands it to our protocol.
                    try:
                        yield {"drain": app.drain, "door": Door(app), "acceptor": acceptor}
                    finally:
                        acceptor.close()
            finally:
                await gateway.stop()
                if app.tracing is not None:  # export what is buffered, off the event loop
                    await asyncio.to_thread(app.tracing.shutdown)
        finally:
            app.drain.give_back_sigterm()

    routes = [
        *endpoints.ROUTES,
        *monitoring.DATA_ROUTES,
        *admin.ROUTES,
        *monitoring.ADMIN_ROUTES,
        *rollout.ROUTES,
    ]
    if consumers is not None:
        routes = [route for route in endpoints.ROUTES if route.path in CONSUMER_PATHS]
    app = GatewayApp(routes=routes, exception_handlers=EXCEPTION_HANDLERS, lifespan=lifespan)
    app.settings = settings
    # A consumer process has no load balancer to wait for: SIGTERM stops it at once.
    app.drain = Drain(settings.drain_s if consumers is None else 0.0)
    return app


@contextlib.asynccontextmanager
async def _grpc_face(
    app: GatewayApp, gateway: Gateway, binding: GrpcBinding, serving: bool
) -> AsyncIterator[None]:
    """The gRPC server, from the models' start to the gateway's stop, when `grpc_port` is set:
    stopped after uvicorn has stopped serving HTTP, with `shutdown_timeout_s` for the RPCs in
    flight (README "Graceful shutdown")."""
    port = app.settings.grpc_port
    if port is None or not serving:
        yield
        return
    from gateway.grpc.server import GrpcServer

    server = GrpcServer(gateway, lambda: app.drain.draining, app.tracing)
    await server.start(binding, port)
    try:
        yield
    finally:
        await server.stop(app.settings.shutdown_timeout_s)


def app_from_env() -> Starlette:
    """Factory for uvicorn workers: `gateway serve` passes the config file in GATEWAY_CONFIG,
    and the host in GATEWAY_HOST; the workers' gRPC servers share `grpc_port` (SO_REUSEPORT)."""
    settings = load_settings(os.environ.get("GATEWAY_CONFIG", DEFAULT_CONFIG))
    binding = GrpcBinding(os.environ.get("GATEWAY_HOST", DEFAULT_HOST), share_port=True)
    return create_app(settings, grpc_binding=binding)
