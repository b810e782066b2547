"""Builds the app in three steps: middlewares, routes, exception handlers.

``app`` is what ``uvicorn service.main:app`` (make serve) runs, with settings from GUARD_* env.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from prometheus_client import CollectorRegistry

from service import tracing
from service.api import classify, health, models, quarantine, scrape, v2, v2_grpc
from service.api.error_responses import add_exception_handlers
from service.api.middleware import BodyLimitMiddleware, RequestContextMiddleware
from service.api.schemas import ClassifyJSONRequest
from service.api.v2_dataplane import DataPlane
from service.guard import Guard
from service.logs import configure_logging
from service.metrics import Metrics
from service.repository import ModelRepository
from service.settings import Settings

VERSION = "0.1.0"
ROUTERS = (
    v2.infer_router,  # first: the hot route is matched first
    classify.router,
    models.router,
    quarantine.router,
    health.router,
    scrape.router,
    v2.health_router,
    v2.router,
)


def add_middlewares(app: FastAPI, settings: Settings, metrics: Metrics) -> None:
    # Added last = outermost: the context (request id, counters) wraps the body limit, so a
    # 413 from the limit still carries a request id and is counted.
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    # The routers' own routes, for naming the route of a request answered before routing.
    routes = [route for router in ROUTERS for route in router.routes]
    app.add_middleware(RequestContextMiddleware, metrics=metrics, routes=routes)


def register_routes(app: FastAPI) -> None:
    for router in ROUTERS:
        app.include_router(router)


def _openapi_with_extra_schemas(app: FastAPI) -> dict[str, Any]:
    """The OpenAPI document, plus the JSON request schema that /classify parses itself."""
    if app.openapi_schema is None:
        schema = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        body = ClassifyJSONRequest.model_json_schema(ref_template="#/components/schemas/{model}")
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        components.update(body.pop("$defs", {}))
        components["ClassifyJSONRequest"] = body
        app.openapi_schema = schema
    return app.openapi_schema


async def _freeze_when_loaded(repository: ModelRepository) -> None:
    """Once every set is loaded and warm, leave what exists (the app, its routes, the sets:
    tens of thousands of objects) out of the cyclic garbage collector's passes. They live as
    long as the process, and a full pass over them holds the event loop for tens of
    milliseconds once every few thousand requests, in the tail latency of a loaded guard.
    Acyclic garbage is still freed at once."""
    await repository.wait_loaded()
    gc.collect()
    gc.freeze()


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings if settings is not None else Settings()
    configure_logging(settings.log_level)
    metrics = Metrics(CollectorRegistry())
    repository = ModelRepository(settings, metrics)
    guard = Guard(settings, metrics, repository)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        tracing.configure()  # off unless the OTEL_* variables ask (service/tracing.py)
        guard.start()
        await repository.start()
        freezer = asyncio.get_running_loop().create_task(_freeze_when_loaded(repository))
        # V2 over gRPC, on this event loop, calling the same data plane as the REST routes.
        grpc_server = None
        try:
            if settings.grpc_port:
                grpc_server = await v2_grpc.start_server(app.state.dataplane, settings, metrics)
            yield
        finally:
            freezer.cancel()
            if grpc_server is not None:
                await grpc_server.stop(grace=v2_grpc.STOP_GRACE_S)
            await repository.stop()
            guard.stop()
            tracing.shutdown()
            gc.unfreeze()  # what this app made may be collected again (tests run many apps)

    app = FastAPI(
        title="detrigger-guard",
        version=VERSION,
        description="Flags images that carry a backdoor trigger, using a de-trigger autoencoder.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.repository = repository
    app.state.guard = guard
    app.state.dataplane = DataPlane(guard, repository, VERSION)

    add_middlewares(app, settings, metrics)
    register_routes(app)
    add_exception_handlers(app, settings.retry_after_seconds)
    app.openapi = lambda: _openapi_with_extra_schemas(app)  # type: ignore[method-assign]
    return app


app = create_app()
