"""OpenTelemetry spans of the request path, off unless the standard OTEL_* variables ask.

The spans of one request: the server span (joined to the incoming W3C ``traceparent``), then
``decode``, ``queue`` (waiting for a batch), ``inference`` (the batch the request rode in;
other requests of that batch are linked), inside it ``ae_target`` (the set's joined graph;
``ae`` and ``target`` where the set runs them apart, ``target`` for STRIP),
``upstream`` (proxy mode: one client call, which carries the trace on), and ``encode``.

Only opentelemetry-api is a dependency: without a configured SDK every span is a no-op. With
the ``tracing`` extra installed (opentelemetry-sdk, opentelemetry-exporter-otlp),
:func:`configure` switches the SDK on when OTEL_TRACES_EXPORTER names an exporter (``otlp``,
``console``, ...) or an OTLP endpoint is set (OTEL_EXPORTER_OTLP_ENDPOINT or
OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, exporter ``otlp``), unless OTEL_SDK_DISABLED=true. The SDK
then reads the rest itself: OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES, OTEL_TRACES_SAMPLER,
OTEL_BSP_*, the exporter's OTEL_EXPORTER_OTLP_*; OTEL_PROPAGATORS picks the propagators
(W3C trace context and baggage by default).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from importlib.metadata import entry_points
from typing import Any, TypeVar

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode

T = TypeVar("T")
logger = logging.getLogger("guard.tracing")
TRACER_NAME = "detrigger-guard"
SERVICE_NAME = "detrigger-guard"
_installed: list[Any] = []  # the provider configure() set, which shutdown() flushes


def tracer() -> trace.Tracer:
    """The guard's tracer, from the global provider at the time of the call (a no-op one until
    an SDK provider is set, by :func:`configure` or a test)."""
    return trace.get_tracer(TRACER_NAME)


def _requested_exporters(env: Mapping[str, str]) -> list[str]:
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    names = [n.strip() for n in env.get("OTEL_TRACES_EXPORTER", "").split(",") if n.strip()]
    if names:
        return [] if names == ["none"] else [n for n in names if n != "none"]
    if env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        return ["otlp"]
    return []


def configure(env: Mapping[str, str] | None = None) -> bool:
    """Install the SDK's tracer provider when the OTEL_* variables ask for an exporter.

    Returns whether tracing is on. Off (the default) leaves the API's no-op provider. Asked
    for without the ``tracing`` extra, or for an exporter nobody installed, it is an error:
    a deployment that sets OTEL_TRACES_EXPORTER expects spans.
    """
    names = _requested_exporters(os.environ if env is None else env)
    if not names:
        return False
    try:
        from opentelemetry.sdk.resources import SERVICE_NAME as SERVICE_NAME_KEY
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as exc:
        raise RuntimeError(
            f"OTEL_* variables ask for trace exporters {names}, but opentelemetry-sdk is not "
            "installed: pip install 'detrigger-guard[tracing]'"
        ) from exc
    resource = Resource.create()  # OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES
    if str(resource.attributes.get(SERVICE_NAME_KEY, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME_KEY: SERVICE_NAME}))
    provider = TracerProvider(resource=resource)
    for name in names:
        found = entry_points(group="opentelemetry_traces_exporter", name=name)
        if not found:
            raise RuntimeError(
                f"OTEL_TRACES_EXPORTER names {name!r}, which no installed package provides; "
                "the tracing extra installs 'otlp' and the SDK 'console'"
            )
        exporter_class = next(iter(found)).load()
        provider.add_span_processor(BatchSpanProcessor(exporter_class()))
    trace.set_tracer_provider(provider)
    _installed.append(provider)
    logger.info("tracing on", extra={"exporters": names})
    return True


def shutdown() -> None:
    """Flush and stop the provider :func:`configure` installed; one set by someone else (a
    test, an embedding app) is theirs to stop."""
    while _installed:
        _installed.pop().shutdown()


@contextmanager
def server_span(name: str, headers: Mapping[str, str]) -> Iterator[Span]:
    """The request's span, a child of the caller's ``traceparent`` when it sent one; current
    for the whole request, so that every span below joins the caller's trace.

    Where the framework already made one (FastAPI's native telemetry, or the ASGI
    instrumentation, both joined to the traceparent), that one is the request's span: a
    second server span would be its sibling and split the trace."""
    current = trace.get_current_span()
    if current.is_recording() and current.get_span_context().is_valid:
        yield current
        return
    parent = propagate.extract(headers)
    with tracer().start_as_current_span(name, context=parent, kind=SpanKind.SERVER) as span:
        yield span


@contextmanager
def span(name: str, kind: SpanKind = SpanKind.INTERNAL, **attributes: Any) -> Iterator[Span]:
    """A child of the current span; an exception marks it as an error and propagates."""
    with tracer().start_as_current_span(name, kind=kind, attributes=attributes) as current:
        yield current


def start_span(name: str, kind: SpanKind = SpanKind.INTERNAL, **attributes: Any) -> Span:
    """A child of the current span, not made current; whoever holds it ends it (the engine's
    queue wait ends in another task)."""
    return tracer().start_span(name, kind=kind, attributes=attributes)


def current_span() -> Span:
    return trace.get_current_span()


def context_of(current: Span) -> Context:
    return trace.set_span_in_context(current)


def batch_span(name: str, parents: list[Span], **attributes: Any) -> Span:
    """One span for a batch that serves several requests: a child of the first request's
    span, linked to the others' (a span has one parent; links keep the rest reachable)."""
    contexts = [p.get_span_context() for p in parents]
    return tracer().start_span(
        name,
        context=trace.set_span_in_context(parents[0]) if parents else None,
        links=[Link(c) for c in contexts[1:] if c.is_valid],
        attributes=attributes,
    )


def run_in(ctx: Context, fn: Callable[..., T], *args: Any) -> T:
    """Call ``fn`` with ``ctx`` attached (in a worker thread, whose context is empty)."""
    token = otel_context.attach(ctx)
    try:
        return fn(*args)
    finally:
        otel_context.detach(token)


def fail(current: Span, exc: BaseException) -> None:
    current.record_exception(exc)
    current.set_status(Status(StatusCode.ERROR, type(exc).__name__))


def inject(headers: MutableMapping[str, str], of: Span | None = None) -> None:
    """Write the context of ``of`` (the current span when None) into ``headers``
    (``traceparent``, ``tracestate``). Untraced, that is the caller's own context, as the
    allow-list forwards it."""
    propagate.inject(headers, context=None if of is None else trace.set_span_in_context(of))
