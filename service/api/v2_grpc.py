"""The Open Inference Protocol (KServe V2) over gRPC: KServe's ``GRPCInferenceService``.

Thin, like the REST routes (service/api/v2.py): decode the message with ``from_grpc``, call the
same :class:`DataPlane` methods, encode with ``to_grpc``. Each RPC gets what a REST request gets
from the middlewares: a request id (metadata ``x-request-id``, echoed in the trailing metadata),
the API key (metadata ``x-api-key`` or ``authorization: Bearer``), the in-flight gauge, one
``guard_http_requests_total`` count (route = the RPC's path, method POST, the status class of
the HTTP status the error has) and one access-log line. Errors are the domain errors of the one
table (service/api/error_responses.py), answered with its gRPC code.

The server runs on the app's event loop (grpc.aio), started and stopped by the lifespan.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from contract.errors import (
    GuardError,
    ModelNotReady,
    QueueFull,
    UnknownModel,
    UpstreamUnavailable,
)
from service.api.error_responses import grpc_code_of, status_of
from service.api.middleware import REQUEST_ID_HEADER, request_id_from
from service.api.security import check_key, key_from_headers
from service.api.v2_dataplane import DataPlane
from service.logs import request_id_var
from service.metrics import Metrics
from service.protocol.grpc import grpc_predict_v2_pb2 as pb
from service.protocol.grpc import grpc_predict_v2_pb2_grpc as pb_grpc
from service.protocol.infer_type import InferRequest
from service.settings import Settings

access_log = logging.getLogger("guard.access")
logger = logging.getLogger("guard.errors")

SERVICE = "inference.GRPCInferenceService"
# On shutdown, RPCs in flight get this long to finish (uvicorn drains REST requests alike).
STOP_GRACE_S = 5.0
R = TypeVar("R")


def metadata_of(context: grpc.aio.ServicerContext) -> dict[str, str]:
    """The call's text metadata as lower-case headers (binary ``-bin`` entries left out)."""
    out: dict[str, str] = {}
    for key, value in context.invocation_metadata() or ():
        if not key.endswith("-bin") and isinstance(value, str):
            out[key.lower()] = value
    return out


class GuardServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, dataplane: DataPlane, settings: Settings, metrics: Metrics) -> None:
        self.dataplane = dataplane
        self.settings = settings
        self.metrics = metrics

    async def _serve(
        self,
        rpc: str,
        context: grpc.aio.ServicerContext,
        handler: Callable[[dict[str, str]], Awaitable[R]],
        *,
        key_required: bool = True,
    ) -> R:
        """Run one RPC in its request context; a domain error aborts with its gRPC code."""
        headers = metadata_of(context)
        request_id = request_id_from(headers.get(REQUEST_ID_HEADER, ""))
        token = request_id_var.set(request_id)
        trailing: list[tuple[str, str]] = [(REQUEST_ID_HEADER, request_id)]
        status, code, message = 200, grpc.StatusCode.OK, ""
        started = time.perf_counter()
        self.metrics.in_flight.inc()
        try:
            if key_required:
                check_key(key_from_headers(headers), self.settings)
            return await handler(headers)
        except GuardError as exc:
            status, code = status_of(exc), grpc_code_of(status_of(exc))
            message = f"{exc.message} (accepted: {exc.accepted})" if exc.accepted else exc.message
            retry_after = self._retry_after(exc)
            if retry_after is not None:
                trailing.append(("retry-after", str(retry_after)))
            trailing.append(("guard-error-type", exc.kind))
        except asyncio.CancelledError:
            status, code = 499, grpc.StatusCode.CANCELLED  # the caller went away (nginx: 499)
            raise
        except Exception:
            # A bug: never echo it to the caller.
            logger.exception("unhandled error", extra={"rpc": rpc})
            status, code, message = 500, grpc.StatusCode.INTERNAL, "internal error"
        finally:
            self.metrics.in_flight.dec()
            route = f"/{SERVICE}/{rpc}"
            self.metrics.http_requests.labels(
                route=route, method="POST", status_class=f"{status // 100}xx"
            ).inc()
            access_log.info(
                "request",
                extra={
                    "method": "POST",
                    "route": route,
                    "status": status,
                    "grpc_code": code.name,
                    "duration_ms": round((time.perf_counter() - started) * 1000, 3),
                },
            )
            request_id_var.reset(token)
            context.set_trailing_metadata(tuple(trailing))
        await context.abort(code, message, tuple(trailing))
        raise AssertionError("abort raises")  # pragma: no cover

    def _retry_after(self, exc: GuardError) -> int | None:
        if isinstance(exc, UpstreamUnavailable):
            return max(1, exc.retry_after or self.settings.retry_after_seconds)
        if isinstance(exc, QueueFull | ModelNotReady):
            return self.settings.retry_after_seconds
        return None

    def _health_key(self) -> bool:
        return self.settings.protect_health

    # --- health and metadata --------------------------------------------------------------
    async def ServerLive(self, request: Any, context: Any) -> Any:  # noqa: N802 (the protocol's)
        async def live(_: dict[str, str]) -> Any:
            return pb.ServerLiveResponse(live=True)

        return await self._serve("ServerLive", context, live, key_required=self._health_key())

    async def ServerReady(self, request: Any, context: Any) -> Any:  # noqa: N802
        async def ready(_: dict[str, str]) -> Any:
            return pb.ServerReadyResponse(ready=self.dataplane.ready())

        return await self._serve("ServerReady", context, ready, key_required=self._health_key())

    async def ModelReady(self, request: Any, context: Any) -> Any:  # noqa: N802
        async def model_ready(_: dict[str, str]) -> Any:
            is_ready = self.dataplane.model_ready(request.name, request.version or None)
            return pb.ModelReadyResponse(ready=is_ready)

        return await self._serve("ModelReady", context, model_ready)

    async def ServerMetadata(self, request: Any, context: Any) -> Any:  # noqa: N802
        async def metadata(_: dict[str, str]) -> Any:
            return pb.ServerMetadataResponse(**self.dataplane.server_metadata())

        return await self._serve("ServerMetadata", context, metadata)

    async def ModelMetadata(self, request: Any, context: Any) -> Any:  # noqa: N802
        async def metadata(_: dict[str, str]) -> Any:
            meta = self.dataplane.model_metadata(request.name, request.version or None)
            # The protocol's message has no parameters: the guard's are in the REST metadata.
            return pb.ModelMetadataResponse(
                name=meta["name"],
                versions=meta["versions"],
                platform=meta["platform"],
                inputs=[_tensor_metadata(t) for t in meta["inputs"]],
                outputs=[_tensor_metadata(t) for t in meta["outputs"]],
            )

        return await self._serve("ModelMetadata", context, metadata)

    # --- inference ------------------------------------------------------------------------
    async def ModelInfer(self, request: Any, context: Any) -> Any:  # noqa: N802
        async def infer(headers: dict[str, str]) -> Any:
            if not request.model_name:
                raise UnknownModel("model_name is empty", accepted="a model set's name")
            parsed = await asyncio.to_thread(InferRequest.from_grpc, request)
            answer = await self.dataplane.infer(
                request.model_name, request.model_version or None, parsed, headers
            )
            # Raw outputs to a caller that sent raw inputs (tritonclient), else typed contents.
            raw = bool(request.raw_input_contents)
            return await asyncio.to_thread(answer.to_grpc, raw)

        started = time.perf_counter()
        try:
            return await self._serve("ModelInfer", context, infer)
        finally:
            self.metrics.observe_stage("total", time.perf_counter() - started)


def _tensor_metadata(tensor: dict[str, Any]) -> Any:
    return pb.ModelMetadataResponse.TensorMetadata(
        name=str(tensor.get("name", "")),
        datatype=str(tensor.get("datatype", "")),
        shape=[int(d) for d in tensor.get("shape", [])],
    )


async def start_server(
    dataplane: DataPlane, settings: Settings, metrics: Metrics
) -> grpc.aio.Server:
    """The gRPC server on GUARD_GRPC_HOST:GUARD_GRPC_PORT, started on the running loop. A
    message over GUARD_MAX_BODY_BYTES is refused by gRPC itself with RESOURCE_EXHAUSTED, as
    REST refuses the body with 413. Fails (RuntimeError) when the port cannot be bound."""
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", settings.max_body_bytes),
            ("grpc.so_reuseport", 0),  # a second guard on the same port must fail, not share
        ]
    )
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(
        GuardServicer(dataplane, settings, metrics), server
    )
    address = f"{settings.grpc_host}:{settings.grpc_port}"
    credentials = server_credentials(settings)
    if credentials is None:
        bound = server.add_insecure_port(address)
    else:
        bound = server.add_secure_port(address, credentials)
    if bound == 0:
        raise RuntimeError(f"V2 gRPC server: cannot bind {address}")
    await server.start()
    tls = "off" if credentials is None else "mtls" if settings.grpc_tls_client_ca else "tls"
    logging.getLogger("guard.grpc").info(
        "V2 gRPC server started", extra={"address": address, "tls": tls}
    )
    return server


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS credentials from GUARD_GRPC_TLS_CERT / _KEY (and _CLIENT_CA: client certificates
    required), or None for plaintext. The files are checked here, with the standard library's
    TLS, because gRPC itself would only fail each handshake later: a key that does not match
    its certificate, or a file that is not PEM, stops the start (RuntimeError) instead."""
    if settings.grpc_tls_cert is None or settings.grpc_tls_key is None:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(settings.grpc_tls_cert, settings.grpc_tls_key)
        if settings.grpc_tls_client_ca is not None:
            context.load_verify_locations(cafile=settings.grpc_tls_client_ca)
        cert = settings.grpc_tls_cert.read_bytes()
        key = settings.grpc_tls_key.read_bytes()
        client_ca = (
            None
            if settings.grpc_tls_client_ca is None
            else settings.grpc_tls_client_ca.read_bytes()
        )
    except (OSError, ssl.SSLError) as exc:
        raise RuntimeError(
            "V2 gRPC server: GUARD_GRPC_TLS_CERT / _KEY / _CLIENT_CA must be readable PEM files, "
            f"the key matching the certificate: {exc}"
        ) from exc
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )
