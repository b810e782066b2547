"""All settings of the guard, read from environment variables prefixed ``GUARD_``.

Lists (``GUARD_MODELS``, ``GUARD_PROVIDERS``, ``GUARD_API_KEYS``) take a JSON list or a
comma-separated string. Validators refuse values that would make the service unsafe or useless.
"""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

KNOWN_PROVIDERS = (
    "TensorrtExecutionProvider",
    "CUDAExecutionProvider",
    "CPUExecutionProvider",
)


class Mode(str, Enum):
    """What /classify answers for a flagged image."""

    flag = "flag"  # always answer the class on the input; mark flagged images
    block = "block"  # flagged images get no class at all
    repair = "repair"  # answer with the class after de-triggering


def _split_list(value: Any) -> Any:
    """Accept a JSON list or a comma-separated string for list settings."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            return json.loads(text)
        return [item.strip() for item in text.split(",") if item.strip()]
    return value


class Settings(BaseSettings):
    """The guard's configuration. Every field is documented in docs/service.md."""

    model_config = SettingsConfigDict(env_prefix="GUARD_", extra="ignore", frozen=True)

    # --- model sets -------------------------------------------------------------------------
    models: Annotated[list[Path], NoDecode] = Field(
        default_factory=lambda: [Path("models/mnist")],
        description="Model-set folders; each is addressed by its manifest name; the first is the "
        "default.",
    )
    default_mode: Mode = Field(
        default=Mode.flag, description="Mode used when a request names none."
    )

    # --- ONNX Runtime -------------------------------------------------------------------------
    providers: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: list(KNOWN_PROVIDERS),
        description="Execution providers in order of preference; the one in use is read back "
        "from the session.",
    )
    intra_op_threads: int = Field(
        default=0, ge=0, le=256, description="ORT intra-op threads per session (0 = ORT's default)."
    )
    inter_op_threads: int = Field(
        default=1, ge=0, le=256, description="ORT inter-op threads per session (0 = ORT's default)."
    )
    graph_optimization: Literal["disable", "basic", "extended", "all"] = Field(
        default="all", description="ORT graph optimisation level."
    )
    ort_spinning: bool = Field(
        default=False,
        description="Let ORT's idle pool threads spin. Off by default: spinning threads take the "
        "CPU that the event loop and decoding need on small machines.",
    )

    # --- engine (batching) ------------------------------------------------------------------
    max_batch_size: int = Field(
        default=64, ge=1, le=4096, description="Most images in one engine batch."
    )
    max_batch_wait_ms: float = Field(
        default=2.0,
        ge=0.0,
        le=1000.0,
        description="Longest wait for more images before a batch runs.",
    )
    max_queue_images: int = Field(
        default=2048, ge=1, le=1_000_000, description="Images allowed to wait; more answers 503."
    )
    retry_after_seconds: int = Field(
        default=1, ge=1, le=3600, description="Retry-After sent with a 503."
    )
    decode_threads: int = Field(default=2, ge=1, le=64, description="Threads that decode images.")

    # --- limits -----------------------------------------------------------------------------
    max_body_bytes: int = Field(
        default=16 * 1024 * 1024,
        ge=1024,
        le=1024 * 1024 * 1024,
        description="Largest request body.",
    )
    max_images_per_request: int = Field(
        default=256, ge=1, le=10_000, description="Most images in one request."
    )
    max_image_pixels: int = Field(
        default=16_777_216, ge=1, le=200_000_000, description="Most pixels (w*h) in one image."
    )

    # --- security and logs ------------------------------------------------------------------
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list, description="Accepted API keys; empty disables auth."
    )
    protect_health: bool = Field(
        default=False, description="Require the API key on /healthz, /readyz."
    )
    protect_metrics: bool = Field(default=False, description="Require the API key on /metrics.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", description="Log level."
    )

    @field_validator("models", "providers", "api_keys", mode="before")
    @classmethod
    def _lists(cls, value: Any) -> Any:
        return _split_list(value)

    @field_validator("models")
    @classmethod
    def _some_models(cls, value: list[Path]) -> list[Path]:
        if not value:
            raise ValueError("name at least one model-set folder")
        return value

    @field_validator("providers")
    @classmethod
    def _known_providers(cls, value: list[str]) -> list[str]:
        unknown = [p for p in value if p not in KNOWN_PROVIDERS]
        if unknown:
            raise ValueError(f"unknown providers {unknown}; allowed: {list(KNOWN_PROVIDERS)}")
        if "CPUExecutionProvider" not in value:
            # Without CPU as the last resort a missing GPU would leave the service dead.
            raise ValueError("providers must include CPUExecutionProvider as the fallback")
        return value

    @field_validator("api_keys")
    @classmethod
    def _strong_keys(cls, value: list[SecretStr]) -> list[SecretStr]:
        if any(len(key.get_secret_value()) < 16 for key in value):
            raise ValueError("API keys must be at least 16 characters")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.max_queue_images < max(self.max_batch_size, self.max_images_per_request):
            # Else a request of allowed size could never fit and would get 503 forever.
            raise ValueError(
                "max_queue_images must be at least max_batch_size and max_images_per_request"
            )
        if (self.protect_health or self.protect_metrics) and not self.api_keys:
            raise ValueError("protect_health / protect_metrics need GUARD_API_KEYS")
        return self
