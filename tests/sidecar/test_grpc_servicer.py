"""The servicer's request context, without a network: what each outcome is counted as, what a
bug tells the caller, what a domain error's trailers say."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from prometheus_client import CollectorRegistry

from contract.errors import QueueFull
from service.api.v2_grpc import GuardServicer
from service.metrics import Metrics
from service.settings import Settings
from tests.support.promtext import parse, value


class Aborted(Exception):
    pass


class FakeContext:
    def __init__(self, metadata: tuple[tuple[str, str], ...] = ()) -> None:
        self.metadata = metadata
        self.trailing: tuple[tuple[str, str], ...] = ()
        self.aborted: tuple[grpc.StatusCode, str] | None = None

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self.metadata

    def set_trailing_metadata(self, trailing: tuple[tuple[str, str], ...]) -> None:
        self.trailing = trailing

    async def abort(self, code: grpc.StatusCode, details: str, trailing: Any = ()) -> None:
        self.aborted = (code, details)
        raise Aborted


def run(handler: Any, context: FakeContext) -> tuple[Metrics, BaseException | None]:
    metrics = Metrics(CollectorRegistry())
    servicer = GuardServicer(None, Settings(), metrics)  # type: ignore[arg-type]
    try:
        asyncio.run(servicer._serve("ModelInfer", context, handler))  # type: ignore[arg-type]
    except BaseException as exc:  # noqa: BLE001 (the outcome under test)
        return metrics, exc
    return metrics, None


def count(metrics: Metrics, status_class: str) -> float:
    from prometheus_client import generate_latest

    samples = parse(generate_latest(metrics.registry).decode())
    route = "/inference.GRPCInferenceService/ModelInfer"
    return value(
        samples, "guard_http_requests_total", route=route, method="POST", status_class=status_class
    )


def test_a_cancelled_call_is_counted_as_4xx() -> None:
    async def handler(_: dict[str, str]) -> None:
        raise asyncio.CancelledError

    metrics, raised = run(handler, FakeContext())
    assert isinstance(raised, asyncio.CancelledError)
    assert (count(metrics, "4xx"), count(metrics, "2xx")) == (1.0, 0.0)


def test_a_bug_is_internal_and_says_nothing_more() -> None:
    async def handler(_: dict[str, str]) -> None:
        raise KeyError("secret detail")

    context = FakeContext()
    metrics, raised = run(handler, context)
    assert isinstance(raised, Aborted)
    assert context.aborted == (grpc.StatusCode.INTERNAL, "internal error")
    assert count(metrics, "5xx") == 1.0


def test_a_domain_error_carries_its_type_retry_after_and_request_id() -> None:
    async def handler(_: dict[str, str]) -> None:
        raise QueueFull("queue full", accepted="fewer images")

    context = FakeContext((("x-request-id", "abc-1"),))
    metrics, raised = run(handler, context)
    assert isinstance(raised, Aborted)
    assert context.aborted == (grpc.StatusCode.UNAVAILABLE, "queue full (accepted: fewer images)")
    trailers = dict(context.trailing)
    assert trailers == {
        "x-request-id": "abc-1",
        "retry-after": "1",
        "guard-error-type": "queue_full",
    }
    assert count(metrics, "5xx") == 1.0


@pytest.mark.parametrize("metadata", [(), (("x-api-key", "nope-nope-nope-nope"),)])
def test_the_key_is_checked_before_the_handler(metadata: tuple[tuple[str, str], ...]) -> None:
    called = []

    async def handler(_: dict[str, str]) -> None:
        called.append(True)

    context = FakeContext(metadata)
    metrics = Metrics(CollectorRegistry())
    settings = Settings(api_keys=["k" * 16])
    servicer = GuardServicer(None, settings, metrics)  # type: ignore[arg-type]
    with pytest.raises(Aborted):
        asyncio.run(servicer._serve("ModelInfer", context, handler))  # type: ignore[arg-type]
    assert not called
    assert context.aborted is not None and context.aborted[0] is grpc.StatusCode.UNAUTHENTICATED
