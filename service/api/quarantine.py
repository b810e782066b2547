"""GET /v1/quarantine: the newest flagged images the quarantine kept (index rows, no bytes)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from service.api.deps import GuardDep
from service.api.security import require_api_key

router = APIRouter(tags=["quarantine"], dependencies=[Depends(require_api_key)])


class QuarantineItem(BaseModel):
    id: str
    time: float = Field(description="Unix time the image was judged.")
    request_id: str | None
    model: str
    detector: str
    mode: str
    score: float
    score_name: str
    threshold: float
    decision_rule: str
    predicted: int
    detriggered: int | None
    image_file: str = Field(description="The image as uploaded (.bin) or its pixels (.png).")
    detriggered_file: str | None = Field(description="AE(x) as PNG; none for STRIP.")
    bytes: int


class QuarantineResponse(BaseModel):
    enabled: bool = Field(
        description="False when neither GUARD_QUARANTINE_DIR nor GUARD_QUARANTINE_S3_URL is set."
    )
    items: list[QuarantineItem]


@router.get(
    "/v1/quarantine",
    operation_id="list_quarantine",
    summary="The newest quarantined flagged images, with their verdicts",
    response_model=QuarantineResponse,
)
async def list_quarantine(
    guard: GuardDep,
    limit: Annotated[int, Query(ge=1, le=1000, description="At most this many items.")] = 100,
    model: Annotated[str | None, Query(description="Only this model set's items.")] = None,
) -> QuarantineResponse:
    if guard.quarantine is None:
        return QuarantineResponse(enabled=False, items=[])
    rows = await run_in_threadpool(guard.quarantine.list, limit, model)
    return QuarantineResponse(enabled=True, items=[QuarantineItem(**row) for row in rows])
