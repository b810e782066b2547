"""Proxy-mode settings and the header allow-list."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from service.backends.upstream import forwarded_headers
from service.logs import request_id_var
from service.settings import Settings


def test_upstreams_parse_from_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "GUARD_UPSTREAMS",
        '{"mnist": {"url": "http://127.0.0.1:8080/", "model": "m", "version": "2"}}',
    )
    monkeypatch.setenv("GUARD_UPSTREAM_FORWARD_HEADERS", "Traceparent, X-Tenant")
    s = Settings()
    assert s.upstreams["mnist"].url == "http://127.0.0.1:8080"
    assert s.upstreams["mnist"].version == "2"
    assert s.upstream_forward_headers == ["traceparent", "x-tenant"]


@pytest.mark.parametrize(
    "env",
    [
        {"GUARD_UPSTREAMS": '{"m": {"url": "ftp://x", "model": "m"}}'},
        {"GUARD_UPSTREAMS": '{"m": {"url": "http://x"}}'},  # no model
        {"GUARD_UPSTREAMS": '{"m": {"url": "http://x", "model": "m", "extra": 1}}'},
        {"GUARD_UPSTREAM_FORWARD_HEADERS": "host"},
        {"GUARD_UPSTREAM_FORWARD_HEADERS": "content-length"},
        # The guard's own credentials must not reach the upstream.
        {"GUARD_UPSTREAM_FORWARD_HEADERS": "authorization", "GUARD_API_KEYS": "k" * 16},
        {"GUARD_UPSTREAM_READ_TIMEOUT_S": "0"},
        # protocol and url must agree: grpc takes grpc://host:port, rest an http(s) URL.
        {"GUARD_UPSTREAMS": '{"m": {"url": "grpc://x:1", "model": "m"}}'},
        {"GUARD_UPSTREAMS": '{"m": {"url": "http://x:1", "model": "m", "protocol": "grpc"}}'},
        {"GUARD_UPSTREAMS": '{"m": {"url": "grpc://x:1/v2", "model": "m", "protocol": "grpc"}}'},
        {"GUARD_UPSTREAMS": '{"m": {"url": "grpc://x:1", "model": "m", "protocol": "soap"}}'},
        {"GUARD_GRPC_PORT": "65536"},
        {"GUARD_GRPC_PORT": "-1"},
        {"GUARD_UPSTREAM_BREAKER_FAILURES": "0"},
    ],
)
def test_unsafe_upstream_values_are_refused(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str]
) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ValidationError):
        Settings()


def test_authorization_may_be_forwarded_when_the_guard_checks_no_keys(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GUARD_UPSTREAM_FORWARD_HEADERS", "authorization")
    assert Settings().upstream_forward_headers == ["authorization"]


def test_only_allow_listed_headers_and_the_request_id_are_forwarded() -> None:
    token = request_id_var.set("rid-1")
    try:
        out = forwarded_headers(
            {"TraceParent": "00-1", "Cookie": "c", "Authorization": "Bearer k", "Host": "h"},
            ["traceparent", "tracestate"],
        )
    finally:
        request_id_var.reset(token)
    assert out == {"traceparent": "00-1", "x-request-id": "rid-1"}


def test_grpc_upstream_and_server_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "GUARD_UPSTREAMS",
        '{"mnist": {"url": "grpc://127.0.0.1:8082", "model": "m", "protocol": "grpc"}}',
    )
    monkeypatch.setenv("GUARD_GRPC_PORT", "0")
    s = Settings()
    assert s.upstreams["mnist"].grpc_target() == "127.0.0.1:8082"
    assert s.grpc_port == 0  # off
    monkeypatch.delenv("GUARD_GRPC_PORT")
    assert (Settings().grpc_host, Settings().grpc_port) == ("127.0.0.1", 8001)  # Triton's
