"""POST /classify: multipart files or JSON with base64 images -> the guard -> results."""

from __future__ import annotations

import base64
import binascii
import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from contract.errors import InvalidRequest, TooManyImages, UnsupportedMediaType
from contract.modes import Detector, Mode
from service import tracing
from service.api.deps import GuardDep, MetricsDep, SettingsDep, identity_encoding
from service.api.schemas import ClassifyJSONRequest, ClassifyResponse, ErrorBody, classify_response
from service.api.security import require_api_key
from service.backends.base import Call
from service.guard import ImageInput
from service.logs import request_id_var
from service.settings import Settings

router = APIRouter(
    tags=["classify"], dependencies=[Depends(require_api_key), Depends(identity_encoding)]
)

FIELD = "images"

_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": text}
    for status, text in {
        400: "Malformed request: bad JSON or base64, no 'images' field",
        401: "Missing or wrong API key (when GUARD_API_KEYS is set)",
        404: "Unknown model set",
        413: "Body, image count or image pixels over the limit",
        415: "Content type is neither multipart/form-data nor application/json",
        422: "Invalid image, wrong image size, bad parameter, or a detector the set does not offer",
        503: "Model set not ready, or the engine queue is full (with Retry-After)",
    }.items()
}

_REQUEST_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": [FIELD],
                "properties": {
                    FIELD: {
                        "type": "array",
                        "items": {"type": "string", "format": "binary"},
                        "description": "One or more image files (PNG, JPEG, BMP, GIF, WebP).",
                    }
                },
            }
        },
        "application/json": {"schema": {"$ref": "#/components/schemas/ClassifyJSONRequest"}},
    },
}


async def _multipart_images(request: Request, settings: Settings) -> list[ImageInput]:
    limit = settings.max_images_per_request
    try:
        parser = MultiPartParser(request.headers, request.stream(), max_files=limit, max_fields=16)
        form = await parser.parse()
    except MultiPartException as exc:
        if exc.message.startswith("Too many files"):
            raise TooManyImages(
                f"more than {limit} files in one request",
                accepted=f"at most {limit} images per request",
            ) from exc
        raise InvalidRequest(f"malformed multipart body: {exc.message}") from exc
    try:
        uploads = [v for v in form.getlist(FIELD) if isinstance(v, UploadFile)]
        if not uploads:
            fields = sorted(set(form.keys()))
            raise InvalidRequest(f"no files in the field {FIELD!r} (the request has {fields})")
        return [ImageInput(await u.read(), u.filename) for u in uploads]
    finally:
        await form.close()


def _json_images(body: bytes) -> tuple[list[ImageInput], ClassifyJSONRequest]:
    try:
        parsed = ClassifyJSONRequest.model_validate_json(body)
    except ValidationError as exc:
        # include_input=False: never echo (or log) image bytes back.
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}"
            for e in exc.errors(include_input=False, include_url=False)
        )
        raise InvalidRequest(f"invalid JSON body: {problems}") from exc
    images = []
    for i, item in enumerate(parsed.images):
        try:
            data = base64.b64decode(item.data, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise InvalidRequest(f"images.{i}.data is not valid base64") from exc
        images.append(ImageInput(data, item.filename))
    return images, parsed


@router.post(
    "/classify",
    operation_id="classify",
    summary="Classify images and flag those that carry a backdoor trigger",
    response_model=ClassifyResponse,
    responses=_ERRORS,
    openapi_extra={"requestBody": _REQUEST_BODY},
)
async def classify(
    request: Request,
    guard: GuardDep,
    settings: SettingsDep,
    metrics: MetricsDep,
    model: Annotated[
        str | None, Query(description="Model set name; default set if absent.")
    ] = None,
    mode: Annotated[Mode | None, Query(description="flag, block or repair.")] = None,
    resize: Annotated[bool, Query(description="Resize images to the model's input.")] = False,
    detector: Annotated[
        Detector | None,
        Query(
            description="detrigger (the de-trigger autoencoder), strip (STRIP, on sets that "
            "ship it), both (the two on one batch, flagged when either fires, on sets whose "
            "manifest has detectors.both), repaired (the target against its repaired copy, "
            "on sets whose manifest has detectors.repaired) or detrigger_or_repaired (the "
            "autoencoder and the repaired copy, flagged when either fires, on sets whose "
            "manifest has detectors.detrigger_or_repaired). Absent: the set's default "
            "detector (GET /v1/models lists it)."
        ),
    ] = None,
) -> ClassifyResponse:
    started = time.perf_counter()
    try:
        media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media_type == "multipart/form-data":
            images = await _multipart_images(request, settings)
        elif media_type == "application/json":
            # Validation and base64 decoding of up to GUARD_MAX_BODY_BYTES: off the loop.
            images, body = await run_in_threadpool(_json_images, await request.body())
            model = body.model or model
            mode = body.mode or mode
            resize = body.resize or resize
            detector = body.detector or detector
        else:
            raise UnsupportedMediaType(f"content type {media_type or 'none'!r} is not accepted")
        # In proxy mode the upstream gets the allow-listed headers (trace context among them),
        # as from the V2 route.
        call = Call(dict(request.headers), request_id_var.get())
        outcome = await guard.classify(
            images, model=model, mode=mode, resize=resize, call=call, detector=detector
        )
        with tracing.span("encode", model=outcome.model_set.name):
            return classify_response(outcome)
    finally:
        metrics.observe_stage("total", time.perf_counter() - started)
