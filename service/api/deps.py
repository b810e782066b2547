"""Dependency aliases: what a route handler may ask for.

Every dependency is ``async def``: FastAPI runs a plain ``def`` dependency on a worker thread,
one thread hand-off per lookup and request, for what is an attribute read."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated

from fastapi import Depends, Request

from contract.errors import InvalidRequest
from service.api.v2_dataplane import DataPlane
from service.guard import Guard
from service.metrics import Metrics
from service.repository import ModelRepository
from service.settings import Settings


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_guard(request: Request) -> Guard:
    guard: Guard = request.app.state.guard
    return guard


async def get_repository(request: Request) -> ModelRepository:
    repository: ModelRepository = request.app.state.repository
    return repository


async def get_metrics(request: Request) -> Metrics:
    metrics: Metrics = request.app.state.metrics
    return metrics


async def get_dataplane(request: Request) -> DataPlane:
    dataplane: DataPlane = request.app.state.dataplane
    return dataplane


def refuse_compressed(headers: Mapping[str, str]) -> None:
    """Request bodies are read as sent: a compressed one (Content-Encoding gzip, br, ...) is
    refused up front rather than parsed as garbage."""
    encoding = headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise InvalidRequest(
            f"compressed request bodies ({encoding}) are not accepted",
            accepted="Content-Encoding identity (an uncompressed body)",
        )


async def identity_encoding(request: Request) -> None:
    refuse_compressed(request.headers)


SettingsDep = Annotated[Settings, Depends(get_settings)]
GuardDep = Annotated[Guard, Depends(get_guard)]
RepositoryDep = Annotated[ModelRepository, Depends(get_repository)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
DataPlaneDep = Annotated[DataPlane, Depends(get_dataplane)]
