"""The Open Inference Protocol (KServe V2) over REST: health, metadata, infer.

Thin: parse the body (JSON, or JSON + binary tensor data), call the data plane, write back.
Errors come back in the protocol's shape, {"error": "..."} (service.api.error_responses). The
protocol defines these routes; they are left out of the guard's own OpenAPI document.
"""

from __future__ import annotations

import time

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from contract.errors import InvalidRequest
from service import tracing
from service.api.deps import DataPlaneDep, refuse_compressed
from service.api.security import (
    check_key,
    key_from_headers,
    require_api_key,
    require_key_for_health,
)
from service.api.v2_dataplane import DataPlane
from service.metrics import Metrics
from service.protocol.infer_type import InferRequest

HEADER_LENGTH = "inference-header-content-length"
# A body whose JSON text is this short is parsed on the event loop (orjson: about 35 us for one
# 28x28 image), and an answer of this many output elements is encoded there: a worker thread
# would cost two wake-ups, each often a scheduler slice on a busy machine.
INLINE_JSON_BYTES = 16 * 1024
INLINE_BODY_BYTES = 1024 * 1024
INLINE_OUTPUT_ELEMENTS = 1024

health_router = APIRouter(
    tags=["v2"], include_in_schema=False, dependencies=[Depends(require_key_for_health)]
)
router = APIRouter(tags=["v2"], include_in_schema=False, dependencies=[Depends(require_api_key)])
# The hot path takes no dependencies: their eight solves per request (the key's header and
# bearer schemes, the settings, the encoding, the data plane, the metrics) cost about a sixth
# of the guard's CPU at one image per request. The handler makes the same checks itself, with
# the functions the dependencies and the gRPC server use.
infer_router = APIRouter(tags=["v2"], include_in_schema=False)


@health_router.get("/v2/health/live")
async def live() -> dict[str, bool]:
    return {"live": True}


@health_router.get("/v2/health/ready")
async def ready(dataplane: DataPlaneDep) -> JSONResponse:
    is_ready = dataplane.ready()
    return JSONResponse({"ready": is_ready}, status_code=200 if is_ready else 503)


@router.get("/v2")
async def server_metadata(dataplane: DataPlaneDep) -> dict[str, object]:
    return dataplane.server_metadata()


@router.get("/v2/models/{model_name}")
@router.get("/v2/models/{model_name}/versions/{model_version}")
async def model_metadata(
    dataplane: DataPlaneDep, model_name: str, model_version: str | None = None
) -> dict[str, object]:
    return dataplane.model_metadata(model_name, model_version)


@router.get("/v2/models/{model_name}/ready")
@router.get("/v2/models/{model_name}/versions/{model_version}/ready")
async def model_ready(
    dataplane: DataPlaneDep, model_name: str, model_version: str | None = None
) -> JSONResponse:
    is_ready = dataplane.model_ready(model_name, model_version)
    return JSONResponse(
        {"name": model_name, "ready": is_ready}, status_code=200 if is_ready else 503
    )


def _header_length(request: Request) -> int | None:
    raw = request.headers.get(HEADER_LENGTH)
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError as exc:
        raise InvalidRequest(f"Inference-Header-Content-Length {raw!r} is not an integer") from exc


@infer_router.post("/v2/models/{model_name}/infer")
@infer_router.post("/v2/models/{model_name}/versions/{model_version}/infer")
async def infer(request: Request, model_name: str, model_version: str | None = None) -> Response:
    state = request.app.state
    dataplane: DataPlane = state.dataplane
    metrics: Metrics = state.metrics
    check_key(key_from_headers(request.headers), state.settings)
    refuse_compressed(request.headers)
    started = time.perf_counter()
    try:
        body = await request.body()
        length = _header_length(request)
        json_bytes = len(body) if length is None else length
        if json_bytes <= INLINE_JSON_BYTES and len(body) <= INLINE_BODY_BYTES:
            parsed = InferRequest.from_rest(body, length)
        else:
            parsed = await run_in_threadpool(InferRequest.from_rest, body, length)
        answer = await dataplane.infer(model_name, model_version, parsed, dict(request.headers))
        with tracing.span("encode", model=answer.model_name):
            if sum(t.data.size for t in answer.outputs) <= INLINE_OUTPUT_ELEMENTS:
                content, json_length = answer.to_rest(parsed)
            else:
                content, json_length = await run_in_threadpool(answer.to_rest, parsed)
        if json_length is None:
            return Response(content, media_type="application/json")
        return Response(
            content,
            media_type="application/octet-stream",
            headers={"Inference-Header-Content-Length": str(json_length)},
        )
    finally:
        metrics.observe_stage("total", time.perf_counter() - started)
