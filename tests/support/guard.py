"""A started request path (Guard over a loaded ModelRepository), without HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from service.guard import Guard
from service.metrics import Metrics
from service.repository import ModelRepository
from service.settings import Settings


@asynccontextmanager
async def running_guard(settings: Settings, metrics: Metrics | None = None) -> AsyncIterator[Guard]:
    """Every configured set loaded (or failed), as the app's lifespan does."""
    metrics = metrics if metrics is not None else Metrics()
    repository = ModelRepository(settings, metrics)
    guard = Guard(settings, metrics, repository)
    await repository.start()
    await repository.wait_loaded()
    try:
        yield guard
    finally:
        await repository.stop()
        guard.stop()
