"""One upstream V2 model over gRPC (``"protocol": "grpc"`` in GUARD_UPSTREAMS).

The REST client's twin (service/backends/upstream.py): the same breaker, metrics, answer checks
and readiness bookkeeping, inherited; only the transport differs. One ``grpc.aio`` channel per
upstream (HTTP/2 multiplexes every call over it), inputs in raw contents, allow-listed headers as
metadata. gRPC status codes become the same typed errors as HTTP statuses:

- DEADLINE_EXCEEDED: UpstreamTimeout (504), kind ``timeout``, a failure for the breaker;
- UNAVAILABLE: UpstreamUnreachable (502), kind ``connect``, a failure;
- a refusal of the request (INVALID_ARGUMENT, NOT_FOUND, PERMISSION_DENIED, UNAUTHENTICATED,
  ...): UpstreamFailed (502), kind ``http_4xx``; the upstream is up, a success for the breaker;
- any other code (INTERNAL, UNKNOWN, ...): UpstreamFailed (502), kind ``http_5xx``, a failure.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import grpc
import httpx

from contract.errors import UpstreamFailed, UpstreamTimeout, UpstreamUnreachable
from service.backends.upstream import UpstreamClient, model_metadata
from service.metrics import Metrics
from service.protocol.grpc import grpc_predict_v2_pb2 as pb
from service.protocol.grpc import grpc_predict_v2_pb2_grpc as pb_grpc
from service.protocol.infer_type import InferRequest, InferResponse
from service.settings import Settings, Upstream

logger = logging.getLogger("guard.upstream")

# The upstream refused this request; it is up (HTTP 4xx alike).
REFUSALS = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)
# The answer holds 2N (or N * (n + 1)) rows of logits: small; the limit only bounds nonsense.
MAX_ANSWER_BYTES = 256 * 1024 * 1024


def channel_credentials(config: Upstream) -> grpc.ChannelCredentials | None:
    """TLS for a grpcs:// upstream: its CA file (else the system's roots) and the guard's client
    certificate where one is configured; None for grpc:// (plaintext). Read once, at startup: a
    missing or unreadable file stops the start with the upstream's name in the message."""
    if not config.grpc_tls():
        return None

    def read(path: Path | None) -> bytes | None:
        return None if path is None else path.read_bytes()

    try:
        return grpc.ssl_channel_credentials(
            root_certificates=read(config.ca_file),
            private_key=read(config.key_file),
            certificate_chain=read(config.cert_file),
        )
    except OSError as exc:
        raise RuntimeError(f"upstream {config.url}: cannot read a TLS file: {exc}") from exc


class GrpcUpstreamClient(UpstreamClient):
    answered_ok = "OK with a message"

    def __init__(
        self,
        http: httpx.AsyncClient,
        config: Upstream,
        settings: Settings,
        metrics: Metrics,
        model_set: str,
    ) -> None:
        super().__init__(http, config, settings, metrics, model_set)
        self._channel: grpc.aio.Channel | None = None
        self._stub: Any = None
        self._credentials = channel_credentials(config)

    def stub(self) -> Any:
        """The channel's stub, made on first use (a grpc.aio channel belongs to the running
        event loop)."""
        if self._stub is None:
            options = [
                ("grpc.max_send_message_length", -1),
                ("grpc.max_receive_message_length", MAX_ANSWER_BYTES),
                ("grpc.enable_http_proxy", 0),  # a sidecar talks to its neighbour directly
            ]
            target = self.config.grpc_target()
            if self._credentials is None:
                self._channel = grpc.aio.insecure_channel(target, options=options)
            else:
                self._channel = grpc.aio.secure_channel(target, self._credentials, options=options)
            self._stub = pb_grpc.GRPCInferenceServiceStub(self._channel)
        return self._stub

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel, self._stub = None, None

    def _timeout(self) -> float:
        return self.settings.upstream_connect_timeout_s + self.settings.upstream_read_timeout_s

    # --- inference ------------------------------------------------------------------------
    async def _exchange(self, request: InferRequest, headers: dict[str, str]) -> InferResponse:
        message = request.to_grpc(self.config.model, self.config.version)
        try:
            answer = await self.stub().ModelInfer(
                message, metadata=tuple(headers.items()), timeout=self._timeout()
            )
        except grpc.aio.AioRpcError as exc:
            raise self._failed(exc) from exc
        return InferResponse.from_grpc(answer)

    def _failed(self, exc: grpc.aio.AioRpcError) -> Exception:
        """Count the failed call and say what went wrong, as a typed error."""
        code, details = exc.code(), (exc.details() or "")[:500]
        if code is grpc.StatusCode.DEADLINE_EXCEEDED:
            self.breaker.record_failure()
            self._error("timeout")
            return UpstreamTimeout(f"{self.describe()} did not answer within {self._timeout()} s")
        if code is grpc.StatusCode.UNAVAILABLE:
            self.breaker.record_failure()
            self._error("connect")
            return UpstreamUnreachable(f"{self.describe()} is unavailable: {details}")
        if code in REFUSALS:
            self.breaker.record_success()  # it answered: it is up, it refused this request
            self._error("http_4xx")
            return UpstreamFailed(
                f"{self.describe()} refused the request with {code.name}: {details}"
            )
        self.breaker.record_failure()
        self._error("http_5xx")
        return UpstreamFailed(f"{self.describe()} answered {code.name}: {details}")

    # --- readiness ------------------------------------------------------------------------
    async def probe(self) -> bool:
        """ModelReady, then ModelMetadata (read on every probe, as the REST client does)."""
        name, version = self.config.model, self.config.version or ""
        timeout = self._timeout()
        try:
            stub = self.stub()
            ready = await stub.ModelReady(
                pb.ModelReadyRequest(name=name, version=version), timeout=timeout
            )
            if not ready.ready:
                raise ValueError("ModelReady answered false")
            meta = await stub.ModelMetadata(
                pb.ModelMetadataRequest(name=name, version=version), timeout=timeout
            )
            self.metadata = model_metadata(_metadata_dict(meta))
        except grpc.aio.AioRpcError as exc:
            return self._probed(False, f"{self.describe()}: {exc.code().name}: {exc.details()}")
        except ValueError as exc:
            return self._probed(False, f"{self.describe()}: {exc}")
        return self._probed(True, "ready")


def _metadata_dict(meta: Any) -> dict[str, Any]:
    """A ModelMetadataResponse as the REST metadata object the guard reads."""

    def tensors(items: Any) -> list[dict[str, Any]]:
        return [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in items]

    return {
        "name": meta.name,
        "versions": list(meta.versions),
        "platform": meta.platform,
        "inputs": tensors(meta.inputs),
        "outputs": tensors(meta.outputs),
    }
