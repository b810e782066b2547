"""Optional API-key auth, compared in constant time."""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from typing import Annotated

from fastapi import Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from contract.errors import Unauthorized
from service.api.deps import SettingsDep
from service.settings import Settings

_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, scheme_name="ApiKey")
_bearer = HTTPBearer(auto_error=False, scheme_name="Bearer")
ApiKeyHeader = Annotated[str | None, Security(_api_key_header)]
BearerCredentials = Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)]


def key_matches(given: str, settings: Settings) -> bool:
    """True when ``given`` equals one of the configured keys.

    Every key is compared, with hmac.compare_digest, so the time taken says nothing about
    which key (or which prefix) was close.
    """
    given_bytes = given.encode("utf-8")
    found = False
    for key in settings.api_keys:
        found |= hmac.compare_digest(given_bytes, key.get_secret_value().encode("utf-8"))
    return found


def check_key(given: str | None, settings: Settings) -> None:
    """Unauthorized unless ``given`` is a configured key (no check when none is configured);
    REST's dependencies below and the gRPC server's metadata use it alike."""
    if not settings.api_keys:
        return
    if not given:
        raise Unauthorized("an API key is required")
    if not key_matches(given, settings):
        raise Unauthorized("the API key is not valid")


def key_from_headers(headers: Mapping[str, str]) -> str | None:
    """The key from ``x-api-key`` or ``authorization: Bearer <key>`` (lower-case names, as
    Starlette's headers and gRPC metadata have them)."""
    key = headers.get("x-api-key")
    if key:
        return key
    scheme, _, credentials = headers.get("authorization", "").partition(" ")
    return credentials.strip() if scheme.lower() == "bearer" else None


def _from_headers(request: Request) -> str | None:
    return key_from_headers(request.headers)


async def require_api_key(
    settings: SettingsDep, api_key: ApiKeyHeader, bearer: BearerCredentials
) -> None:
    """For the API routes: the key when GUARD_API_KEYS is set (shown in the OpenAPI document)."""
    check_key(api_key or (bearer.credentials if bearer else None), settings)


async def require_key_for_health(request: Request, settings: SettingsDep) -> None:
    """For /healthz and /readyz: only when GUARD_PROTECT_HEALTH is on."""
    if settings.protect_health:
        check_key(_from_headers(request), settings)


async def require_key_for_metrics(request: Request, settings: SettingsDep) -> None:
    """For /metrics: only when GUARD_PROTECT_METRICS is on."""
    if settings.protect_metrics:
        check_key(_from_headers(request), settings)
