"""All settings of the guard, read from environment variables prefixed ``GUARD_``.

Lists (``GUARD_MODELS``, ``GUARD_PROVIDERS``, ``GUARD_API_KEYS``) take a JSON list or a
comma-separated string. Validators refuse values that would make the service unsafe or useless.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    FilePath,
    SecretStr,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from contract.modes import Detector, Mode

KNOWN_PROVIDERS = (
    "TensorrtExecutionProvider",
    "CUDAExecutionProvider",
    "CPUExecutionProvider",
)


# Headers forwarded to an upstream V2 server unless GUARD_UPSTREAM_FORWARD_HEADERS says otherwise:
# W3C trace context and B3 tracing. Credentials are opt-in (see the validator below).
DEFAULT_FORWARD_HEADERS = (
    "traceparent",
    "tracestate",
    "baggage",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "b3",
)
# Headers the guard itself reads as credentials: never forwarded while the guard checks keys.
GUARD_CREDENTIAL_HEADERS = ("authorization", "x-api-key")
# Hop-by-hop and framing headers: the guard's own HTTP client sets these.
NEVER_FORWARDED = (
    "host",
    "content-length",
    "content-type",
    "content-encoding",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "upgrade",
    "te",
    "trailer",
    "proxy-authorization",
    "inference-header-content-length",
    "x-request-id",
)


class Upstream(BaseModel):
    """Proxy mode of one model set: the upstream V2 server that serves its target model."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str = Field(description="Base URL of the upstream V2 server, e.g. http://127.0.0.1:8080.")
    model: str = Field(min_length=1, description="The model's name on the upstream server.")
    version: str | None = Field(None, description="The model version on the upstream server.")
    input_name: str | None = Field(
        None, description="The upstream model's image input; default: its first input."
    )
    output_name: str | None = Field(
        None, description="The upstream model's logits output; default: its first output."
    )
    binary: bool = Field(
        False,
        description="Send inputs and ask for outputs as binary tensor data (Triton, KServe); "
        "MLServer's REST server takes JSON only.",
    )
    protocol: Literal["rest", "grpc"] = Field(
        "rest",
        description="How the guard talks to the upstream: V2 over REST (url http(s)://...) or "
        "over gRPC (url grpc://host:port plaintext, grpcs://host:port TLS; inputs in raw "
        "contents).",
    )
    ca_file: FilePath | None = Field(
        None,
        description="grpcs:// only: PEM CA certificates that sign the upstream's certificate; "
        "unset: gRPC's default roots (GRPC_DEFAULT_SSL_ROOTS_FILE_PATH names others).",
    )
    cert_file: FilePath | None = Field(
        None,
        description="grpcs:// only: the guard's PEM client certificate (chain), for an upstream "
        "that asks for one (mTLS); with key_file.",
    )
    key_file: FilePath | None = Field(
        None, description="grpcs:// only: the PEM private key of cert_file."
    )

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        value = value.rstrip("/")
        schemes = ("http://", "https://", "grpc://", "grpcs://")
        if "?" in value or "#" in value or not value.startswith(schemes):
            raise ValueError(
                "url must be an http:// or https:// base URL (protocol rest) or grpc://host:port "
                "or grpcs://host:port (protocol grpc, grpcs with TLS), without query"
            )
        return value

    @model_validator(mode="after")
    def _url_fits_protocol(self) -> Upstream:
        is_grpc = self.url.startswith(("grpc://", "grpcs://"))
        if is_grpc != (self.protocol == "grpc"):
            raise ValueError(
                f"url {self.url!r} does not fit protocol {self.protocol!r}: protocol grpc takes "
                "grpc://host:port or grpcs://host:port, protocol rest an http(s):// URL"
            )
        if is_grpc and ("/" in self.grpc_target() or not self.grpc_target()):
            raise ValueError("a grpc:// or grpcs:// url is scheme://host:port, without a path")
        tls_files = [self.ca_file, self.cert_file, self.key_file]
        if any(tls_files) and not self.grpc_tls():
            raise ValueError(
                "ca_file, cert_file and key_file are for a grpcs:// upstream (an https:// one "
                "uses the system's CAs, or SSL_CERT_FILE)"
            )
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together (the guard's client certificate)")
        return self

    def grpc_tls(self) -> bool:
        """A grpcs:// upstream: TLS on the channel."""
        return self.url.startswith("grpcs://")

    def grpc_target(self) -> str:
        """host:port of a grpc:// or grpcs:// url."""
        return self.url.split("://", 1)[1]


# S3's bucket naming rules (the common subset that every S3-compatible server accepts).
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


def parse_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket[/prefix]`` -> (bucket, prefix), the prefix empty or ending in ``/``."""
    if not url.startswith("s3://"):
        raise ValueError(f"{url!r} is not s3://bucket or s3://bucket/prefix")
    bucket, _, prefix = url.removeprefix("s3://").partition("/")
    if not _BUCKET.match(bucket) or ".." in bucket:
        raise ValueError(
            f"bucket {bucket!r} is not an S3 bucket name (3-63 characters: lower-case letters, "
            "digits, '.' and '-', starting and ending with a letter or digit)"
        )
    prefix = prefix.strip("/")
    if any(part in ("", ".", "..") for part in prefix.split("/")) and prefix:
        raise ValueError(f"prefix {prefix!r} has an empty, '.' or '..' part")
    if any(c in prefix for c in "?#\\") or any(ord(c) < 32 for c in prefix):
        raise ValueError(f"prefix {prefix!r} has a character outside a plain key prefix")
    return bucket, f"{prefix}/" if prefix else ""


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
    default_detector: Detector | None = Field(
        default=None,
        description="Detector used when a request names none (detrigger, strip, both, "
        "repaired or detrigger_or_repaired). Unset, or where a set does not offer it: the "
        "set's own default (its manifest's detectors.default, e.g. detrigger_or_repaired for "
        "a set made by fit --twin), else detrigger. A request in mode repair gets detrigger "
        "instead of strip or both (they cannot repair).",
    )

    # --- ONNX Runtime -------------------------------------------------------------------------
    providers: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: list(KNOWN_PROVIDERS),
        description="Execution providers in order of preference; the one in use is read back "
        "from the session.",
    )
    trt_cache_dir: Path | None = Field(
        default=None,
        description="TensorRT engine and timing cache, a folder of the guard's own (a volume "
        "that survives restarts): each graph gets a sub-folder named by the ONNX Runtime "
        "version and the sha256 of the bytes it was built from. Unset: TensorRT builds its "
        "engines at every start. Used only when the TensorRT provider loads.",
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
        default=0.0,
        ge=0.0,
        le=1000.0,
        description="Longest wait for more images before a batch runs while the engine is idle; "
        "0 dispatches at once (images still batch while a batch runs).",
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
    max_request_pixels: int = Field(
        default=33_554_432,
        ge=1,
        le=2_000_000_000,
        description="Most pixels decoded for one request, all its image files together; "
        "checked on the files' headers before any decoding (413 when over).",
    )
    bulk_decode_pixels: int = Field(
        default=4_194_304,
        ge=1,
        le=2_000_000_000,
        description="Requests whose image files decode to more pixels than this decode one at "
        "a time on their own thread, so that they never hold up small requests.",
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

    # --- V2 over gRPC ---------------------------------------------------------------------------
    grpc_port: int = Field(
        default=8001,
        ge=0,
        le=65535,
        description="Port of the V2 gRPC server (KServe's GRPCInferenceService), served beside "
        "REST in the same process; 0 turns it off.",
    )
    grpc_host: str = Field(
        default="127.0.0.1",
        min_length=1,
        description="Address the V2 gRPC server binds (0.0.0.0 in a container).",
    )

    grpc_tls_cert: FilePath | None = Field(
        default=None,
        description="PEM certificate (chain) of the V2 gRPC server; with GUARD_GRPC_TLS_KEY the "
        "server speaks TLS only. Unset: plaintext.",
    )
    grpc_tls_key: FilePath | None = Field(
        default=None, description="PEM private key of GUARD_GRPC_TLS_CERT."
    )
    grpc_tls_client_ca: FilePath | None = Field(
        default=None,
        description="PEM CA certificates: the gRPC server then asks every client for a "
        "certificate they signed (mTLS) and refuses the call without one.",
    )

    # --- quarantine of flagged inputs (opt-in, docs/service.md "Quarantine") -------------------
    quarantine_dir: Path | None = Field(
        default=None,
        description="Keep flagged images (with their de-triggered image and verdict) in this "
        "folder, indexed in SQLite; unset: off.",
    )
    quarantine_max_bytes: int = Field(
        default=1024**3, ge=1, description="Size bound of the quarantine; oldest evicted first."
    )
    quarantine_max_age_s: float = Field(
        default=7 * 24 * 3600.0, gt=0.0, description="Age bound of a quarantined item."
    )
    quarantine_s3_url: str | None = Field(
        default=None,
        description="Keep flagged images in an S3-compatible bucket instead, as "
        "s3://bucket/prefix (needs the s3 extra, boto3); credentials from the standard AWS "
        "chain, never a setting. Unset: off (or GUARD_QUARANTINE_DIR).",
    )
    quarantine_s3_endpoint_url: str | None = Field(
        default=None,
        description="Endpoint of an S3-compatible server (MinIO, Ceph, ...), e.g. "
        "http://minio:9000; unset: AWS S3.",
    )
    quarantine_s3_region: str | None = Field(
        default=None, description="The bucket's region; unset: boto3's own (AWS_REGION, ...)."
    )
    quarantine_queue: int = Field(
        default=256,
        ge=1,
        le=100_000,
        description="Flagged images waiting for the writer; past it they are dropped (counted).",
    )

    # --- proxy mode (sidecar) ------------------------------------------------------------------
    upstreams: dict[str, Upstream] = Field(
        default_factory=dict,
        description="Proxy mode: model-set name -> upstream V2 server (JSON object); sets not "
        "named here run their own target (local mode).",
    )
    upstream_connect_timeout_s: float = Field(
        default=1.0, gt=0.0, le=60.0, description="Connect timeout to an upstream."
    )
    upstream_read_timeout_s: float = Field(
        default=10.0, gt=0.0, le=600.0, description="Read (and write) timeout of an upstream call."
    )
    upstream_max_connections: int = Field(
        default=64, ge=1, le=4096, description="Connections in the one pooled upstream client."
    )
    upstream_forward_headers: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: list(DEFAULT_FORWARD_HEADERS),
        description="Allow-list of request headers forwarded to the upstream (case-insensitive).",
    )
    upstream_breaker_failures: int = Field(
        default=3, ge=1, le=1000, description="Consecutive upstream failures that open the breaker."
    )
    upstream_breaker_reset_s: float = Field(
        default=5.0,
        gt=0.0,
        le=3600.0,
        description="How long the breaker stays open before a probe.",
    )
    upstream_probe_interval_s: float = Field(
        default=2.0, gt=0.0, le=3600.0, description="How often upstream readiness is polled."
    )

    @field_validator("upstream_forward_headers", mode="before")
    @classmethod
    def _header_list(cls, value: Any) -> Any:
        value = _split_list(value)
        return [str(v).strip().lower() for v in value] if isinstance(value, list) else value

    @field_validator("upstream_forward_headers")
    @classmethod
    def _forwardable(cls, value: list[str]) -> list[str]:
        bad = [h for h in value if h in NEVER_FORWARDED]
        if bad:
            raise ValueError(f"headers {bad} are set by the guard itself and cannot be forwarded")
        return value

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

    @field_validator("trt_cache_dir")
    @classmethod
    def _cache_folder(cls, value: Path | None) -> Path | None:
        if value is not None and value.exists() and not value.is_dir():
            raise ValueError(f"{value} exists and is not a folder")
        return value

    @field_validator("api_keys")
    @classmethod
    def _strong_keys(cls, value: list[SecretStr]) -> list[SecretStr]:
        if any(len(key.get_secret_value()) < 16 for key in value):
            raise ValueError("API keys must be at least 16 characters")
        return value

    @field_validator("quarantine_s3_url")
    @classmethod
    def _s3_url(cls, value: str | None) -> str | None:
        if value is not None:
            parse_s3_url(value)  # ValueError saying what is wrong
        return value

    @field_validator("quarantine_s3_endpoint_url")
    @classmethod
    def _s3_endpoint(cls, value: str | None) -> str | None:
        if value is None:
            return value
        value = value.rstrip("/")
        if not value.startswith(("http://", "https://")) or any(c in value for c in "?#"):
            raise ValueError("quarantine_s3_endpoint_url must be an http(s):// URL, no query")
        if "@" in value.split("://", 1)[1].split("/", 1)[0]:
            # Credentials come from the AWS chain; a URL would show them in every settings dump.
            raise ValueError(
                "quarantine_s3_endpoint_url must not hold credentials (user:password@): use "
                "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or a profile"
            )
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if (self.grpc_tls_cert is None) != (self.grpc_tls_key is None):
            raise ValueError("GUARD_GRPC_TLS_CERT and GUARD_GRPC_TLS_KEY go together")
        if self.grpc_tls_client_ca is not None and self.grpc_tls_cert is None:
            raise ValueError(
                "GUARD_GRPC_TLS_CLIENT_CA (mTLS) needs GUARD_GRPC_TLS_CERT and GUARD_GRPC_TLS_KEY"
            )
        if self.quarantine_dir is not None and self.quarantine_s3_url is not None:
            raise ValueError(
                "set GUARD_QUARANTINE_DIR or GUARD_QUARANTINE_S3_URL, not both: the quarantine "
                "has one store"
            )
        if self.quarantine_s3_url is None and (
            self.quarantine_s3_endpoint_url or self.quarantine_s3_region
        ):
            raise ValueError(
                "GUARD_QUARANTINE_S3_ENDPOINT_URL / _REGION need GUARD_QUARANTINE_S3_URL"
            )
        if self.max_queue_images < max(self.max_batch_size, self.max_images_per_request):
            # Else a request of allowed size could never fit and would get 503 forever.
            raise ValueError(
                "max_queue_images must be at least max_batch_size and max_images_per_request"
            )
        if (self.protect_health or self.protect_metrics) and not self.api_keys:
            raise ValueError("protect_health / protect_metrics need GUARD_API_KEYS")
        leaked = [h for h in self.upstream_forward_headers if h in GUARD_CREDENTIAL_HEADERS]
        if leaked and self.api_keys:
            # The caller's credential for the guard would reach the upstream.
            raise ValueError(
                f"upstream_forward_headers {leaked} would send the guard's API keys upstream; "
                "drop them or GUARD_API_KEYS"
            )
        return self
