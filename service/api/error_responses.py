"""The ONE table that maps the contract's domain errors to HTTP responses, and the handlers.

Every error body has the same shape::

    {"error": {"type": "invalid_image", "message": "...", "accepted": "..."}, "request_id": "..."}

except on the KServe V2 routes, which answer in the protocol's shape, ``{"error": "..."}``.
V2 over gRPC answers the same errors with a gRPC status code: the HTTP status of the one table,
then ``GRPC_CODE`` (service/api/v2_grpc.py).
"""

from __future__ import annotations

import logging

import grpc
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from contract.errors import (
    Blocked,
    DetectorNotAvailable,
    GuardError,
    ImageTooLarge,
    InvalidImage,
    InvalidParameter,
    InvalidRequest,
    ModelFailed,
    ModelLoadError,
    ModelNotReady,
    PayloadTooLarge,
    QuarantineUnavailable,
    QueueFull,
    TooManyImages,
    TooManyPixels,
    Unauthorized,
    UnknownModel,
    UnscorableImage,
    UnsupportedMediaType,
    UpstreamFailed,
    UpstreamTimeout,
    UpstreamUnavailable,
    UpstreamUnreachable,
    WrongImageSize,
)
from service.logs import request_id_var

logger = logging.getLogger("guard.errors")

# The ONE table: domain error -> HTTP status. Lookups walk the class hierarchy.
STATUS: dict[type[GuardError], int] = {
    InvalidRequest: 400,
    Unauthorized: 401,
    UnknownModel: 404,
    PayloadTooLarge: 413,
    TooManyImages: 413,
    ImageTooLarge: 413,
    TooManyPixels: 413,
    UnsupportedMediaType: 415,
    InvalidImage: 422,
    WrongImageSize: 422,
    InvalidParameter: 422,
    DetectorNotAvailable: 422,
    UnscorableImage: 422,
    Blocked: 403,
    ModelNotReady: 503,
    QueueFull: 503,
    UpstreamUnavailable: 503,
    UpstreamUnreachable: 502,
    UpstreamFailed: 502,
    UpstreamTimeout: 504,
    ModelFailed: 503,
    ModelLoadError: 503,
    QuarantineUnavailable: 503,
    GuardError: 500,
}


# The HTTP status of the table above -> the gRPC status code of the same error, as KServe's
# and Triton's gRPC servers answer (400 INVALID_ARGUMENT, 404 NOT_FOUND, 503 UNAVAILABLE) and,
# where they have no such error, as gRPC's HTTP mapping and Envoy do (401, 403, 502). Never
# UNKNOWN or INTERNAL for a domain error: INTERNAL is a 500, a bug.
GRPC_CODE: dict[int, grpc.StatusCode] = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,  # mode block refused a flagged image
    404: grpc.StatusCode.NOT_FOUND,
    # Too large: what gRPC itself answers for a message over the receive limit.
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    # The upstream failed or is unreachable: retryable elsewhere, as gRPC maps 502 and 503.
    502: grpc.StatusCode.UNAVAILABLE,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
    500: grpc.StatusCode.INTERNAL,
}


def grpc_code_of(status: int) -> grpc.StatusCode:
    return GRPC_CODE.get(status, grpc.StatusCode.INTERNAL)


def status_of(exc: GuardError) -> int:
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]  # type: ignore[index]
    return 500


def error_body(kind: str, message: str, accepted: str = "") -> dict[str, object]:
    return {
        "error": {"type": kind, "message": message, "accepted": accepted},
        "request_id": request_id_var.get(),
    }


def v2_error_body(kind: str, message: str, accepted: str = "") -> dict[str, object]:
    """The Open Inference Protocol's error shape, {"error": "<message>"}, with the guard's
    type, what is accepted and the request id beside it."""
    return {
        "error": message,
        "type": kind,
        "accepted": accepted,
        "request_id": request_id_var.get(),
    }


def is_v2(path: str) -> bool:
    """Routes of the V2 protocol answer errors in its shape."""
    return path == "/v2" or path.startswith("/v2/")


def body_for(path: str, kind: str, message: str, accepted: str = "") -> dict[str, object]:
    """The error body in the shape of the route at ``path``: V2's, else the guard's own."""
    shape = v2_error_body if is_v2(path) else error_body
    return shape(kind, message, accepted)


def error_response(exc: GuardError, retry_after: int, path: str) -> JSONResponse:
    status = status_of(exc)
    headers: dict[str, str] = {}
    if isinstance(exc, QueueFull | ModelNotReady):
        headers["Retry-After"] = str(retry_after)
    if isinstance(exc, UpstreamUnavailable):
        headers["Retry-After"] = str(max(1, exc.retry_after or retry_after))
    if isinstance(exc, Unauthorized):
        headers["WWW-Authenticate"] = 'Bearer realm="detrigger-guard"'
    body = body_for(path, exc.kind, exc.message, exc.accepted)
    return JSONResponse(body, status_code=status, headers=headers)


def add_exception_handlers(app: FastAPI, retry_after: int) -> None:
    """Register the handlers: domain errors, validation errors, Starlette HTTP errors, bugs."""

    async def on_guard_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, GuardError)
        return error_response(exc, retry_after, request.url.path)

    async def on_validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err.get('loc', ()))}: {err.get('msg', '')}"
            for err in exc.errors()
        )
        return JSONResponse(
            body_for(
                request.url.path,
                InvalidParameter.kind,
                problems,
                "see /openapi.json for the parameters",
            ),
            status_code=422,
        )

    async def on_http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse(
            body_for(request.url.path, kind, str(exc.detail), "see /openapi.json for the routes"),
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    async def on_bug(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error: %s", type(exc).__name__)
        return JSONResponse(
            body_for(request.url.path, "internal_error", "internal error"), status_code=500
        )

    app.add_exception_handler(GuardError, on_guard_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(Exception, on_bug)
