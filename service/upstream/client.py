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

from service.errors import (
    UpstreamFailed,
    UpstreamTimeout,
    UpstreamUnavailable,
    UpstreamUnreachable,
)
from service.logs import request_id_var
from service.metrics import Metrics
from service.protocol.infer_type import InferRequest, InferResponse
from service.settings import Settings, Upstream
from service.upstream.breaker import BreakerOpen, BreakerState, CircuitBreaker

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
    async def infer(self, request: InferRequest, headers: Mapping[str, str]) -> InferResponse:
        try:
            self.breaker.before_call()
        except BreakerOpen as exc:
            self._error("breaker_open")
            raise UpstreamUnavailable(
                f"{self.describe()} is failing; the circuit breaker is open and the guard does "
                f"not call it until the next probe ({exc.retry_after_s:.1f} s)",
                retry_after=self.breaker.retry_after(),
            ) from exc
        body, header_length = request.to_rest(binary=self.config.binary)
        send_headers = forwarded_headers(headers, self.settings.upstream_forward_headers)
        if header_length is None:
            send_headers["content-type"] = "application/json"
        else:
            send_headers["content-type"] = "application/octet-stream"
            send_headers[HEADER_LENGTH] = str(header_length)
        started = time.perf_counter()
        outcome = "error"
        try:
            try:
                response = await self.http.post(
                    self.model_url + "/infer", content=body, headers=send_headers
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
            self.breaker.record_success()  # it answered: it is up
            if response.status_code != 200:
                self._error("http_4xx")
                raise UpstreamFailed(
                    f"{self.describe()} refused the request with {response.status_code}: "
                    f"{_error_text(response)}"
                )
            try:
                raw_length = response.headers.get(HEADER_LENGTH)
                parsed = InferResponse.from_rest(
                    response.content, None if raw_length is None else int(raw_length)
                )
            except ValueError as exc:
                self._error("invalid_response")
                raise UpstreamFailed(
                    f"{self.describe()} answered 200 with a body that is not a V2 inference "
                    f"response: {exc}"
                ) from exc
            outcome = "ok"
            return parsed
        except BaseException:
            if self.breaker.state is BreakerState.half_open:
                self.breaker.release_probe()  # e.g. the caller went away mid-probe
            raise
        finally:
            self.metrics.upstream_duration.labels(model=self.label, outcome=outcome).observe(
                time.perf_counter() - started
            )

    # --- readiness ------------------------------------------------------------------------
    async def probe(self) -> bool:
        """GET .../ready (and the model metadata, once); sets ``ready`` and ``reason``."""
        timeout = httpx.Timeout(
            self.settings.upstream_connect_timeout_s, read=self.settings.upstream_read_timeout_s
        )
        try:
            r = await self.http.get(self.model_url + "/ready", timeout=timeout)
            if r.status_code == 200 and self.metadata is None:
                meta = await self.http.get(self.model_url, timeout=timeout)
                if meta.status_code == 200:
                    self.metadata = meta.json()
        except (httpx.HTTPError, ValueError) as exc:
            ready, reason = False, f"{self.describe()}: {type(exc).__name__}: {exc}"
        else:
            ready = r.status_code == 200 and self.metadata is not None
            reason = "ready" if ready else f"{self.describe()}: ready answered {r.status_code}"
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
