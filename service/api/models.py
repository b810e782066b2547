"""GET /v1/models: what each configured model set is, and where it runs."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from service.api.deps import RepositoryDep, SettingsDep
from service.api.schemas import ModelsResponse, model_summary
from service.api.security import require_api_key

router = APIRouter(tags=["models"], dependencies=[Depends(require_api_key)])


@router.get(
    "/v1/models",
    operation_id="list_models",
    summary="Each model set's manifest summary, provider and state",
    response_model=ModelsResponse,
)
async def list_models(repository: RepositoryDep, settings: SettingsDep) -> ModelsResponse:
    return ModelsResponse(
        models=[
            model_summary(
                slot, default=name == repository.default_model, detector=settings.default_detector
            )
            for name, slot in repository.slots.items()
        ]
    )
