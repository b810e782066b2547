"""One upstream V2 model, called through the app's ONE pooled ``httpx.AsyncClient``.

Every call goes through the circuit breaker, carries only allow-listed headers (plus the
guard's request id), and ends as a V2 response or a typed error: UpstreamUnavailable (breaker
open, 503), UpstreamUnreachable (502), UpstreamFailed (502), UpstreamTimeout (504).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from typing import Any

import httpx
import numpy as np

from contract.errors import (
    UpstreamFailed,
    UpstreamTimeout,
    UpstreamUnavailable,
    UpstreamUnreachable,
)
from service import tracing
from service.backends.breaker import BreakerOpen, BreakerState, CircuitBreaker
from service.logs import request_id_var
from service.metrics import Metrics
from service.protocol.infer_type import InferRequest, InferResponse, load_json
from service.settings import Settings, Upstream

logger = logging.getLogger("guard.upstream")
HEADER_LENGTH = "inference-header-content-length"


def new_http_client(settings: Settings) -> httpx.AsyncClient:
    """The one pooled client shared by every upstream (keep-alive connections, timeouts)."""
    read = settings.upstream_read_timeout_s
    return httpx.AsyncClient(
        timeout=httpx.Timeout(
            connect=settings.upstream_connect_timeout_s, read=read, write=read, pool=read
        ),
        limits=httpx.Limits(
            max_connections=settings.upstream_max_connections,
            max_keepalive_connections=settings.upstream_max_connections,
        ),
        follow_redirects=False,
        trust_env=False,  # a sidecar talks to its neighbour, never through an HTTP proxy
    )


def forwarded_headers(incoming: Mapping[str, str], allow: list[str]) -> dict[str, str]:
    """The allow-listed request headers, plus the guard's request id for tracing."""
    lowered = {k.lower(): v for k, v in incoming.items()}
    out = {name: lowered[name] for name in allow if name in lowered}
    request_id = request_id_var.get()
    if request_id:
        out["x-request-id"] = request_id
    return out


def model_metadata(obj: Any) -> dict[str, Any]:
    """The upstream's model metadata, checked as far as the guard reads it: an object whose
    ``inputs`` and ``outputs``, where present, are lists of objects with a string name."""
    if not isinstance(obj, dict):
        raise ValueError(f"model metadata is a JSON {type(obj).__name__}, not an object")
    for key in ("inputs", "outputs"):
        tensors = obj.get(key, [])
        if not isinstance(tensors, list) or not all(
            isinstance(t, dict) and isinstance(t.get("name"), str) for t in tensors
        ):
            raise ValueError(f"model metadata {key!r} is not a list of named tensors")
    return obj


def _error_text(response: httpx.Response) -> str:
    """The upstream's own error message, short."""
    try:
        body: Any = response.json()
        text = body.get("error", body) if isinstance(body, dict) else body
    except (json.JSONDecodeError, UnicodeDecodeError):
        text = response.text
    text = text if isinstance(text, str) else json.dumps(text)
    return text[:500]


class UpstreamClient:
    answered_ok = "200 with a body"  # how an error message names a successful answer

    def __init__(
        self,
        http: httpx.AsyncClient,
        config: Upstream,
        settings: Settings,
        metrics: Metrics,
        model_set: str,
    ) -> None:
        self.http = http
        self.config = config
        self.settings = settings
        self.metrics = metrics
        self.label = model_set
        version = f"/versions/{config.version}" if config.version else ""
        self.model_url = f"{config.url}/v2/models/{config.model}{version}"
        self.breaker = CircuitBreaker(
            settings.upstream_breaker_failures,
            settings.upstream_breaker_reset_s,
            on_change=self._breaker_changed,
        )
        self.metadata: dict[str, Any] | None = None
        self.ready = False
        self.reason = "upstream not probed yet"
        metrics.init_upstream(model_set)

    def describe(self) -> str:
        return f"upstream {self.config.model!r} at {self.config.url}"

    def _breaker_changed(self, state: BreakerState) -> None:
        self.metrics.upstream_breaker_state.labels(model=self.label).set(int(state))
        logger.warning(
            "upstream circuit breaker " + state.name,
            extra={"model": self.label, "upstream": self.config.url, "state": state.name},
        )

    def _error(self, kind: str) -> None:
        self.metrics.upstream_errors.labels(model=self.label, kind=kind).inc()

    # --- inference ------------------------------------------------------------------------
    async def infer(
        self, request: InferRequest, headers: Mapping[str, str], classes: int
    ) -> tuple[InferResponse, np.ndarray]:
        """One call for a batch of ``rows`` images: the upstream's V2 response and its logits,
        (rows, classes) float32, every one finite. An answer that is not that is the upstream's
        failure: 502, counted as ``invalid_response``, and it counts against the breaker."""
        try:
            self.breaker.before_call()
        except BreakerOpen as exc:
            self._error("breaker_open")
            raise UpstreamUnavailable(
                f"{self.describe()} is failing; the circuit breaker is open and the guard does "
                f"not call it until the next probe ({exc.retry_after_s:.1f} s)",
                retry_after=self.breaker.retry_after(),
            ) from exc
        rows = request.inputs[0].shape[0]
        send_headers = forwarded_headers(headers, self.settings.upstream_forward_headers)
        started = time.perf_counter()
        outcome = "error"
        span = tracing.start_span(
            "upstream", kind=tracing.SpanKind.CLIENT, model=self.label, images=rows
        )
        span.set_attribute("server.address", httpx.URL(self.config.url).host)
        # The upstream's spans join this call's span: its traceparent replaces the caller's.
        tracing.inject(send_headers, span)
        try:
            try:
                parsed = await self._exchange(request, send_headers)
                logits = self._logits(parsed, rows, classes)
            except ValueError as exc:
                self.breaker.record_failure()
                self._error("invalid_response")
                raise UpstreamFailed(
                    f"{self.describe()} answered {self.answered_ok} that is not a usable V2 "
                    f"inference response: {exc}"
                ) from exc
            self.breaker.record_success()
            outcome = "ok"
            return parsed, logits
        except BaseException as exc:
            tracing.fail(span, exc)
            if self.breaker.state is BreakerState.half_open:
                self.breaker.release_probe()  # e.g. the caller went away mid-probe
            raise
        finally:
            span.end()
            self.metrics.upstream_duration.labels(model=self.label, outcome=outcome).observe(
                time.perf_counter() - started
            )

    async def _exchange(self, request: InferRequest, headers: dict[str, str]) -> InferResponse:
        """Send one inference request; its answer, a typed error of the transport, or
        ValueError for an answer that is not a V2 inference response. (The gRPC client,
        upstream_grpc.py, replaces this and the probe.)"""
        body, header_length = request.to_rest(binary=self.config.binary)
        if header_length is None:
            headers["content-type"] = "application/json"
        else:
            headers["content-type"] = "application/octet-stream"
            headers[HEADER_LENGTH] = str(header_length)
        response = await self._post(body, headers)
        raw_length = response.headers.get(HEADER_LENGTH)
        return InferResponse.from_rest(
            response.content, None if raw_length is None else int(raw_length)
        )

    async def close(self) -> None:
        """The REST client shares the repository's pooled HTTP client: nothing of its own."""

    async def _post(self, body: bytes, headers: dict[str, str]) -> httpx.Response:
        """POST .../infer; a 200 response, or the typed error of what went wrong."""
        try:
            response = await self.http.post(
                self.model_url + "/infer", content=body, headers=headers
            )
        except httpx.TimeoutException as exc:
            self.breaker.record_failure()
            self._error("timeout")
            phase = "connect" if isinstance(exc, httpx.ConnectTimeout) else "answer"
            limit = (
                self.settings.upstream_connect_timeout_s
                if phase == "connect"
                else self.settings.upstream_read_timeout_s
            )
            raise UpstreamTimeout(
                f"{self.describe()} did not {phase} within {limit} s ({type(exc).__name__})"
            ) from exc
        except httpx.TransportError as exc:
            self.breaker.record_failure()
            self._error("connect")
            raise UpstreamUnreachable(
                f"{self.describe()} is unreachable: {type(exc).__name__}: {exc}"
            ) from exc
        if response.status_code >= 500:
            self.breaker.record_failure()
            self._error("http_5xx")
            raise UpstreamFailed(
                f"{self.describe()} answered {response.status_code}: {_error_text(response)}"
            )
        if response.status_code != 200:
            self.breaker.record_success()  # it answered: it is up, it refused this request
            self._error("http_4xx")
            raise UpstreamFailed(
                f"{self.describe()} refused the request with {response.status_code}: "
                f"{_error_text(response)}"
            )
        return response

    def _logits(self, response: InferResponse, rows: int, classes: int) -> np.ndarray:
        """The chosen output as (rows, classes) finite float32 logits; ValueError otherwise.
        Every output must have one row per image sent, as the caller's answer slices rows."""
        for tensor in response.outputs:
            if not tensor.shape or tensor.shape[0] != rows:
                raise ValueError(
                    f"output {tensor.name!r} has shape {tensor.shape} for a batch of {rows}"
                )
        name = self.output_name()
        if name is None:
            chosen = response.outputs[0] if response.outputs else None
        else:
            chosen = next((t for t in response.outputs if t.name == name), None)
        if chosen is None:
            raise ValueError(f"no output {name!r} (got {[t.name for t in response.outputs]})")
        if chosen.datatype not in ("FP16", "FP32", "FP64") or chosen.shape != [rows, classes]:
            raise ValueError(
                f"{chosen.name!r} is {chosen.datatype} {chosen.shape}; the guard needs float "
                f"logits of shape [{rows}, {classes}]"
            )
        logits = np.asarray(chosen.data, dtype=np.float32)
        finite = np.isfinite(logits).all(axis=1)  # (rows,)
        if not finite.all():
            bad = np.flatnonzero(~finite).tolist()
            raise ValueError(f"{chosen.name!r} has non-finite logits (NaN or inf) in rows {bad}")
        return logits

    # --- readiness ------------------------------------------------------------------------
    async def probe(self) -> bool:
        """GET .../ready, then the model metadata; sets ``ready``, ``reason`` and ``metadata``.

        The metadata is read on every probe that finds the model ready and kept only when it
        is a metadata object, so an upstream that answered nonsense once, or was redeployed
        with other tensor names, is read afresh."""
        timeout = httpx.Timeout(
            self.settings.upstream_connect_timeout_s, read=self.settings.upstream_read_timeout_s
        )
        try:
            r = await self.http.get(self.model_url + "/ready", timeout=timeout)
            if r.status_code != 200:
                raise ValueError(f"ready answered {r.status_code}")
            meta = await self.http.get(self.model_url, timeout=timeout)
            if meta.status_code != 200:
                raise ValueError(f"model metadata answered {meta.status_code}")
            self.metadata = model_metadata(load_json(meta.content))
        except (httpx.HTTPError, ValueError) as exc:
            # Not ready. The last good metadata, if any, stays: tensor names do not vanish
            # with a blip.
            ready, reason = False, f"{self.describe()}: {type(exc).__name__}: {exc}"
        else:
            ready, reason = True, "ready"
        return self._probed(ready, reason)

    def _probed(self, ready: bool, reason: str) -> bool:
        """Record a probe's outcome: the state, the reason, the gauge, a log line on change."""
        if ready != self.ready:
            log = logger.info if ready else logger.warning
            log(
                "upstream " + ("ready" if ready else "not ready"),
                extra={"model": self.label, "reason": reason},
            )
        self.ready, self.reason = ready, reason
        self.metrics.upstream_ready.labels(model=self.label).set(1 if ready else 0)
        return ready

    def input_name(self) -> str:
        if self.config.input_name:
            return self.config.input_name
        inputs = (self.metadata or {}).get("inputs") or []
        return str(inputs[0]["name"]) if inputs else "images"

    def output_name(self) -> str | None:
        if self.config.output_name:
            return self.config.output_name
        outputs = (self.metadata or {}).get("outputs") or []
        return str(outputs[0]["name"]) if outputs else None
