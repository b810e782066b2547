"""OpenTelemetry spans of the request path, read from the SDK's in-memory exporter: a request
with a W3C traceparent gives decode, queue, inference (ae_target: the set's joined graph; ae in
proxy mode), upstream and encode spans
in the caller's trace, each under the parent it should have; and the OTEL_* switch."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from service import tracing
from service.main import create_app
from service.settings import Settings
from tests.fuzz.fake_upstream import FakeUpstream
from tests.support.tiny_models import TinySpec, add_trigger, clean_image, png_bytes

SPEC = TinySpec()
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{CALLER_SPAN}-01"


@pytest.fixture(scope="module")
def exporter() -> Iterator[InMemorySpanExporter]:
    """The SDK on the global provider (set once per process), exporting to memory."""
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    memory = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    yield memory
    memory.shutdown()


def request(settings: Settings, path: str, headers: dict[str, str], **body: Any) -> httpx.Response:
    """POST to the app in this process (its lifespan run as uvicorn runs it, the sets loaded
    first)."""

    async def run() -> httpx.Response:
        app = create_app(settings)
        async with app.router.lifespan_context(app):
            await app.state.repository.wait_loaded()
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://guard") as client:
                return await client.post(path, headers=headers, **body)

    return asyncio.run(run())


def classify(settings: Settings, headers: dict[str, str]) -> httpx.Response:
    """POST /classify a clean and a triggered image."""
    images = [clean_image(SPEC, 3), add_trigger(clean_image(SPEC, 5))]
    files = [("images", (f"{i}.png", png_bytes(x), "image/png")) for i, x in enumerate(images)]
    return request(settings, "/classify", headers, files=files)


def proxy_settings(tiny_set: Path, upstream: FakeUpstream) -> Settings:
    return Settings(
        models=[tiny_set],
        upstreams={"tiny": {"url": upstream.url, "model": "tiny", "version": "1"}},
        upstream_forward_headers=["traceparent"],
    )


def _trace(exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    """The finished spans of the caller's trace (the warm-up's run in traces of their own)."""
    return [
        s for s in exporter.get_finished_spans() if format(s.context.trace_id, "032x") == TRACE_ID
    ]


def _spans(exporter: InMemorySpanExporter) -> dict[str, ReadableSpan]:
    """The guard's spans in the caller's trace, by name; FastAPI's own (fastapi.endpoint, ...,
    where its native telemetry runs) are left out here."""
    spans = [s for s in _trace(exporter) if not s.name.startswith("fastapi.")]
    by_name = {s.name: s for s in spans}
    assert len(by_name) == len(spans), [s.name for s in spans]  # one of each
    return by_name


def _id(span: ReadableSpan) -> str:
    return format(span.context.span_id, "016x")


def _parent(span: ReadableSpan) -> str:
    assert span.parent is not None, span.name
    return format(span.parent.span_id, "016x")


def _under(span: ReadableSpan, ancestor: ReadableSpan, exporter: InMemorySpanExporter) -> bool:
    """Whether ``ancestor`` is on the span's parent chain (FastAPI may put its endpoint span
    between the request's span and the route's work)."""
    by_id = {_id(s): s for s in _trace(exporter)}
    while span.parent is not None and _parent(span) in by_id:
        span = by_id[_parent(span)]
        if span is ancestor:
            return True
    return False


def test_local_request_spans_join_the_callers_trace(
    exporter: InMemorySpanExporter, tiny_set: Path
) -> None:
    exporter.clear()
    r = classify(Settings(models=[tiny_set]), {"traceparent": TRACEPARENT})
    assert r.status_code == 200, r.text
    spans = _spans(exporter)
    assert set(spans) == {
        "POST /classify",
        "decode",
        "queue",
        "inference",
        "ae_target",
        "encode",
    }
    assert {format(s.context.trace_id, "032x") for s in spans.values()} == {TRACE_ID}
    server = spans.pop("POST /classify")
    assert server.kind is trace.SpanKind.SERVER and _parent(server) == CALLER_SPAN
    assert server.attributes["http.response.status_code"] == 200
    for name in ("decode", "queue", "inference", "encode"):
        assert _under(spans[name], server, exporter), name
    # AE and target in one call of the joined graph, under the batch's span
    assert _parent(spans["ae_target"]) == _id(spans["inference"])
    assert spans["inference"].attributes["images"] == 2
    assert spans["ae_target"].attributes["images"] == 2
    # In time order: decode, then queue, then the batch, then the answer.
    assert spans["decode"].end_time <= spans["queue"].end_time <= spans["inference"].start_time
    assert spans["inference"].end_time <= spans["encode"].start_time


def test_v2_request_spans_join_the_callers_trace(
    exporter: InMemorySpanExporter, tiny_set: Path
) -> None:
    """The V2 route, a tensor of numbers: the same spans under the same caller."""
    x = (np.stack([clean_image(SPEC, 3), add_trigger(clean_image(SPEC, 5))]) / 255.0)[:, None]
    body = {
        "inputs": [
            {"name": "images", "shape": list(x.shape), "datatype": "FP32",
             "data": x.astype(np.float32).ravel().tolist()}
        ]
    }  # fmt: skip
    exporter.clear()
    r = request(
        Settings(models=[tiny_set]),
        "/v2/models/tiny/infer",
        {"traceparent": TRACEPARENT},
        json=body,
    )
    assert r.status_code == 200, r.text
    spans = _spans(exporter)
    server = spans["POST /v2/models/{model_name}/infer"]
    assert _parent(server) == CALLER_SPAN
    for name in ("decode", "queue", "inference", "encode"):
        assert _under(spans[name], server, exporter), name
    assert _parent(spans["ae_target"]) == _id(spans["inference"])


def test_proxy_request_spans_and_the_upstream_joins_them(
    exporter: InMemorySpanExporter, tiny_set: Path
) -> None:
    exporter.clear()
    with FakeUpstream(SPEC) as upstream:
        r = classify(proxy_settings(tiny_set, upstream), {"traceparent": TRACEPARENT})
        assert r.status_code == 200, r.text
    spans = _spans(exporter)
    assert {"POST /classify", "decode", "queue", "inference", "ae", "upstream", "encode"} <= set(
        spans
    )
    assert "target" not in spans  # the target ran upstream
    server, call = spans["POST /classify"], spans["upstream"]
    assert call.kind is trace.SpanKind.CLIENT and _under(call, server, exporter)
    assert _parent(server) == CALLER_SPAN
    assert _parent(spans["ae"]) == _id(spans["inference"])
    # The upstream got the trace on, with the guard's call as its parent.
    (seen,) = [h["traceparent"] for h in upstream.infer_headers]
    assert seen == f"00-{TRACE_ID}-{_id(call)}-01"


def test_untraced_the_upstream_gets_the_callers_traceparent(tiny_set: Path) -> None:
    """With no SDK (a fresh process), spans are no-ops and the caller's context goes on as
    the allow-list forwards it."""
    code = f"""
from pathlib import Path
from opentelemetry import trace
from tests.fuzz.fake_upstream import FakeUpstream
from tests.service.test_tracing import SPEC, TRACEPARENT, classify, proxy_settings

with FakeUpstream(SPEC) as upstream:
    r = classify(proxy_settings(Path({str(tiny_set)!r}), upstream), {{"traceparent": TRACEPARENT}})
    assert r.status_code == 200, r.text
print(type(trace.get_tracer_provider()).__name__, upstream.infer_headers[0]["traceparent"])
"""
    assert _python(code).split() == ["ProxyTracerProvider", TRACEPARENT]


def _python(code: str, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": str(Path(__file__).resolve().parents[2]), **(env or {})},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.strip()


@pytest.mark.parametrize(
    ("env", "on"),
    [
        ({}, False),  # off by default
        ({"OTEL_TRACES_EXPORTER": "none"}, False),
        ({"OTEL_TRACES_EXPORTER": "console"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, True),
        ({"OTEL_TRACES_EXPORTER": "console", "OTEL_SDK_DISABLED": "true"}, False),
    ],
)
def test_the_otel_variables_switch_tracing(env: dict[str, str], on: bool) -> None:
    assert bool(tracing._requested_exporters(env)) is on


def test_configure_installs_the_sdk_with_the_named_exporter() -> None:
    code = """
from opentelemetry import trace
from service import tracing
print(tracing.configure(), type(trace.get_tracer_provider()).__name__,
      trace.get_tracer_provider().resource.attributes["service.name"])
"""
    out = _python(code, {"OTEL_TRACES_EXPORTER": "console", "OTEL_SERVICE_NAME": "guard-a"})
    assert out.split() == ["True", "TracerProvider", "guard-a"]
    off = "from service import tracing; print(tracing.configure())"
    assert _python(off) == "False"


def test_configure_refuses_an_exporter_nobody_installed() -> None:
    with pytest.raises(RuntimeError, match="no-such-exporter"):
        tracing.configure({"OTEL_TRACES_EXPORTER": "no-such-exporter"})


def test_server_span_joins_the_traceparent_or_reuses_the_frameworks(
    exporter: InMemorySpanExporter,
) -> None:
    """Without a framework span (FastAPI before its native telemetry) the guard makes the
    server span from the traceparent; under one, it adds no second."""
    exporter.clear()
    with tracing.server_span("POST", {"traceparent": TRACEPARENT}) as own:
        with tracing.span("decode"):
            pass
        with tracing.server_span("POST", {"traceparent": TRACEPARENT}) as again:
            assert again is own
    spans = _spans(exporter)
    assert set(spans) == {"POST", "decode"}
    assert spans["POST"].kind is trace.SpanKind.SERVER and _parent(spans["POST"]) == CALLER_SPAN
    assert _parent(spans["decode"]) == _id(spans["POST"])
