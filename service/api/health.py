"""Liveness and readiness."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from service.api.deps import RepositoryDep
from service.api.schemas import Health, Readiness
from service.api.security import require_key_for_health

router = APIRouter(tags=["health"], dependencies=[Depends(require_key_for_health)])


@router.get("/healthz", operation_id="healthz", summary="Liveness", response_model=Health)
async def healthz() -> Health:
    return Health()


@router.get(
    "/readyz",
    operation_id="readyz",
    summary="Readiness: 200 only when every model set is loaded and warm",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "Not ready; the reasons per model set"}},
)
async def readyz(repository: RepositoryDep) -> JSONResponse:
    ready, reasons = repository.readiness()
    body = Readiness(ready=ready, models=reasons)
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)
