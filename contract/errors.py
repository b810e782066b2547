"""The domain errors, as plain exceptions: what went wrong and what is accepted instead.

Raised by both halves without knowing about HTTP. Each docstring names the HTTP status that the
service's one table (service.api.error_responses.STATUS) gives it; a 500 is a bug.
"""

from __future__ import annotations

IMAGE_FORMATS_TEXT = "PNG, JPEG, BMP, GIF (first frame) or WebP"
CLASSIFY_ACCEPTS = (
    "multipart/form-data with one or more files in the field 'images', or application/json "
    '{"images": [{"data": "<base64>", "filename": "optional"}]}; images in ' + IMAGE_FORMATS_TEXT
)


class GuardError(Exception):
    """Base of every error the guard raises on purpose. Never a 500."""

    kind = "guard_error"
    accepted = "see /openapi.json"

    def __init__(self, message: str, *, accepted: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if accepted is not None:
            self.accepted = accepted


class InvalidRequest(GuardError):
    """400: the request is malformed (bad JSON, bad base64, wrong or missing field)."""

    kind = "invalid_request"
    accepted = CLASSIFY_ACCEPTS


class Unauthorized(GuardError):
    """401: no API key or a wrong one."""

    kind = "unauthorized"
    accepted = "an API key in the 'X-API-Key' header or 'Authorization: Bearer <key>'"


class UnknownModel(GuardError):
    """404: the request names a model set that is not configured."""

    kind = "unknown_model"
    accepted = "the name of a configured model set (GET /v1/models)"


class PayloadTooLarge(GuardError):
    """413: the request body is larger than GUARD_MAX_BODY_BYTES."""

    kind = "payload_too_large"
    accepted = "a smaller request body (GUARD_MAX_BODY_BYTES)"


class TooManyImages(GuardError):
    """413: more images in one request than GUARD_MAX_IMAGES_PER_REQUEST."""

    kind = "too_many_images"
    accepted = "fewer images per request (GUARD_MAX_IMAGES_PER_REQUEST)"


class ImageTooLarge(GuardError):
    """413: an image has more pixels than GUARD_MAX_IMAGE_PIXELS (decompression-bomb guard)."""

    kind = "image_too_large"
    accepted = "images with fewer pixels (GUARD_MAX_IMAGE_PIXELS)"


class TooManyPixels(GuardError):
    """413: the image files of one request decode to more pixels, all together, than
    GUARD_MAX_REQUEST_PIXELS (checked on their headers, before decoding)."""

    kind = "too_many_pixels"
    accepted = "fewer or smaller images per request (GUARD_MAX_REQUEST_PIXELS)"


class UnsupportedMediaType(GuardError):
    """415: the request's content type is neither multipart/form-data nor application/json."""

    kind = "unsupported_media_type"
    accepted = "Content-Type multipart/form-data or application/json"


class InvalidImage(GuardError):
    """422: an image is empty, truncated, corrupt, not an image or in a format not accepted."""

    kind = "invalid_image"
    accepted = IMAGE_FORMATS_TEXT


class WrongImageSize(GuardError):
    """422: an image's size is not the model's input size and resizing was not asked for."""

    kind = "wrong_image_size"
    accepted = "images of the model's input size, or resize=true"


class InvalidParameter(GuardError):
    """422: a query or JSON parameter has a value that is not allowed."""

    kind = "invalid_parameter"
    accepted = "see /openapi.json for the parameters"


class DetectorNotAvailable(GuardError):
    """422: the request asks for a detector that the model set does not offer (STRIP needs a
    calibrated bank in the set's manifest)."""

    kind = "detector_not_available"
    accepted = "a detector the model set offers (GET /v1/models lists each set's detectors)"


class ModelNotReady(GuardError):
    """503: the model set is not loaded and warm (yet, or because loading failed)."""

    kind = "model_not_ready"
    accepted = "a retry once GET /readyz answers 200"


class QueueFull(GuardError):
    """503 with Retry-After: the engine queue is full; the caller should retry later."""

    kind = "queue_full"
    accepted = "a retry after Retry-After seconds"


class Blocked(GuardError):
    """403: mode block on the V2 protocol, and an input image was flagged as triggered."""

    kind = "blocked"
    accepted = "images without a backdoor trigger, or mode flag or repair"


class UpstreamUnavailable(GuardError):
    """503 with Retry-After: the circuit breaker of the upstream V2 server is open; the guard
    fails fast without calling it until the next probe."""

    kind = "upstream_unavailable"
    accepted = "a retry after Retry-After seconds, once the upstream server is back"

    def __init__(self, message: str, *, accepted: str | None = None, retry_after: int = 0) -> None:
        super().__init__(message, accepted=accepted)
        self.retry_after = retry_after


class UpstreamUnreachable(GuardError):
    """502: the upstream V2 server refused or dropped the connection."""

    kind = "upstream_unreachable"
    accepted = "a retry once the upstream server is reachable"


class UpstreamFailed(GuardError):
    """502: the upstream V2 server answered with an error status or a body that is not a
    valid V2 inference response."""

    kind = "upstream_error"
    accepted = "a request the upstream server accepts; its own message is quoted"


class UpstreamTimeout(GuardError):
    """504: the upstream V2 server did not connect or answer within the configured timeouts."""

    kind = "upstream_timeout"
    accepted = "a retry; GUARD_UPSTREAM_CONNECT_TIMEOUT_S / GUARD_UPSTREAM_READ_TIMEOUT_S"


class QuarantineUnavailable(GuardError):
    """503: the quarantine's store (an S3-compatible bucket) could not be read for the
    listing: unreachable, missing bucket, refused credentials. Writes never raise it; they
    drop and count."""

    kind = "quarantine_unavailable"
    accepted = "a retry once the quarantine's bucket is reachable (GUARD_QUARANTINE_S3_*)"


class UnscorableImage(GuardError):
    """422: the model set's own graphs gave non-finite logits (NaN or infinity) on an image,
    so no verdict can be computed for it. The guard answers none of the request's images
    rather than answer an image it could not judge (fail closed)."""

    kind = "unscorable_image"
    accepted = "images on which the model set's graphs give finite logits"


class ModelFailed(GuardError):
    """503: a loaded model set's graph answered outside the model contract at inference time
    (e.g. logits of the wrong shape): not the caller's fault, and no verdict is given."""

    kind = "model_failed"
    accepted = "a retry once the model set is fixed (GET /readyz, GET /v1/models)"


class ModelLoadError(GuardError):
    """503 if it ever reaches a caller: a model set failed to load (sha256, missing or corrupt
    file). The loader keeps it off the request path: the set is marked failed, not ready."""

    kind = "model_load_error"
