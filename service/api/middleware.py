"""Pure ASGI middlewares: request context (id, logs, request metrics) and the body-size limit."""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import Sequence

from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from contract.errors import PayloadTooLarge
from service import tracing
from service.api.error_responses import body_for
from service.logs import request_id_var
from service.metrics import Metrics

access_log = logging.getLogger("guard.access")
logger = logging.getLogger("guard.errors")

REQUEST_ID_HEADER = "x-request-id"
_SAFE_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def request_id_from(incoming: str) -> str:
    """The caller's request id when it is safe to log and echo, else a new one."""
    return incoming if _SAFE_ID.match(incoming) else uuid.uuid4().hex


def _route_template(scope: Scope, routes: Sequence[BaseRoute]) -> str:
    """The matched route's template; bounded: never the raw path."""
    route = scope.get("route")
    if route is None:
        # Answered before routing (e.g. the body limit): match the path here.
        route = next((r for r in routes if r.matches(scope)[0] is Match.FULL), None)
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "<unmatched>"


class RequestContextMiddleware:
    """Request id (taken from X-Request-ID when it is safe, else new), returned in a header;
    the in-flight gauge; guard_http_requests_total; one JSON access-log line per request."""

    def __init__(self, app: ASGIApp, metrics: Metrics, routes: Sequence[BaseRoute]) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = dict(scope["headers"]).get(REQUEST_ID_HEADER.encode(), b"").decode("latin-1")
        request_id = request_id_from(incoming)
        token = request_id_var.set(request_id)
        status = 500
        response_started = False
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status = message["status"]
                response_started = True
                headers = list(message.get("headers", []))
                headers.append((REQUEST_ID_HEADER.encode(), request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        self.metrics.in_flight.inc()
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        # The request's span, joined to the caller's traceparent; every span below is its child.
        request_span = tracing.server_span(scope["method"], headers)
        span = request_span.__enter__()
        span.set_attribute("guard.request_id", request_id)
        try:
            await self.app(scope, receive, send_with_id)
        except Exception as exc:
            tracing.fail(span, exc)
            # A bug. Answer 500 here, inside the request's context, so that the log line and
            # the response carry the request id; never echo the exception to the caller.
            logger.exception("unhandled error")
            if response_started:
                raise
            body = json.dumps(body_for(scope["path"], "internal_error", "internal error")).encode()
            await send_with_id(
                {
                    "type": "http.response.start",
                    "status": 500,
                    "headers": [(b"content-type", b"application/json")],
                }
            )
            await send_with_id({"type": "http.response.body", "body": body})
        finally:
            self.metrics.in_flight.dec()
            route = _route_template(scope, self.routes)
            if span.is_recording():  # ours; FastAPI's own ends with the response and says this
                span.update_name(f"{scope['method']} {route}")
                span.set_attribute("http.route", route)
                span.set_attribute("http.response.status_code", status)
                if status >= 500:
                    span.set_status(tracing.Status(tracing.StatusCode.ERROR))
            request_span.__exit__(None, None, None)
            self.metrics.http_requests.labels(
                route=route, method=scope["method"], status_class=f"{status // 100}xx"
            ).inc()
            access_log.info(
                "request",
                extra={
                    "method": scope["method"],
                    "route": route,
                    "status": status,
                    "duration_ms": round((time.perf_counter() - started) * 1000, 3),
                },
            )
            request_id_var.reset(token)


class BodyLimitMiddleware:
    """413 for a body over ``max_bytes``: at once from Content-Length, else as soon as the
    streamed bytes pass the limit; the rest of the body is never read."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _error(self, what: str) -> PayloadTooLarge:
        return PayloadTooLarge(
            f"request body {what}; the limit is {self.max_bytes} bytes",
            accepted=f"request bodies of at most {self.max_bytes} bytes",
        )

    async def _reject(self, scope: Scope, send: Send, exc: PayloadTooLarge) -> None:
        body = json.dumps(body_for(scope["path"], exc.kind, exc.message, exc.accepted)).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:
            try:
                length = int(declared)
            except ValueError:
                length = -1
            if length > self.max_bytes:
                await self._reject(scope, send, self._error(f"declares {length} bytes"))
                return

        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise self._error(f"passed {received} bytes")
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except PayloadTooLarge as exc:
            # Normally the app's error handler answers; this covers reads outside a route.
            if started:
                raise
            await self._reject(scope, send, exc)
