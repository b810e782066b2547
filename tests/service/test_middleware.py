"""The ASGI middlewares on their own: what they answer when the app behind them fails."""

from __future__ import annotations

import asyncio
import json

import pytest
from starlette.types import Message, Receive, Scope, Send

from service.api.middleware import BodyLimitMiddleware, RequestContextMiddleware
from service.metrics import Metrics


async def failing_app(scope: Scope, receive: Receive, send: Send) -> None:
    raise RuntimeError("a bug")


def call(app: object, path: str, body: bytes = b"") -> tuple[int, dict]:
    """One HTTP request through the ASGI app; its status and JSON body."""
    sent: list[Message] = []
    scope = {
        "type": "http",
        "method": "POST",
        "path": path,
        "headers": [(b"content-length", str(len(body)).encode())],
        "query_string": b"",
    }

    async def receive() -> Message:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))  # type: ignore[operator]
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    payload = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, json.loads(payload)


@pytest.mark.parametrize("path", ["/v2/models/tiny/infer", "/v2"])
def test_v2_errors_answered_by_the_middlewares_have_the_v2_shape(path: str) -> None:
    """Issue 19 #7: the middlewares answer before the route's handler, and used the /classify
    shape {"error": {"type": ...}} on V2 routes, where the protocol says {"error": "..."}."""
    status, body = call(RequestContextMiddleware(failing_app, Metrics(), routes=[]), path)
    assert status == 500 and body["error"] == "internal error" and body["type"] == "internal_error"
    status, body = call(BodyLimitMiddleware(failing_app, max_bytes=1024), path, b"x" * 2048)
    assert status == 413 and isinstance(body["error"], str), body
    assert body["type"] == "payload_too_large"


def test_classify_errors_keep_the_guard_shape() -> None:
    status, body = call(RequestContextMiddleware(failing_app, Metrics(), routes=[]), "/classify")
    assert status == 500 and body["error"]["type"] == "internal_error"
    status, body = call(BodyLimitMiddleware(failing_app, max_bytes=1024), "/classify", b"x" * 2048)
    assert status == 413 and body["error"]["type"] == "payload_too_large"
