"""The gRPC status of every domain error comes from the one HTTP table; the server binds its
port or refuses to start."""

from __future__ import annotations

import asyncio
import socket

import grpc
import pytest

from contract.errors import Blocked, GuardError, PayloadTooLarge, UpstreamFailed, UpstreamTimeout
from service.api.error_responses import STATUS, grpc_code_of, status_of
from service.api.v2_grpc import start_server
from service.settings import Settings


@pytest.mark.parametrize("error", [e for e in STATUS if e is not GuardError])
def test_no_domain_error_is_unknown_or_internal(error: type[GuardError]) -> None:
    code = grpc_code_of(STATUS[error])
    assert code not in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL, grpc.StatusCode.OK)


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (Blocked, grpc.StatusCode.PERMISSION_DENIED),
        (PayloadTooLarge, grpc.StatusCode.RESOURCE_EXHAUSTED),
        (UpstreamFailed, grpc.StatusCode.UNAVAILABLE),
        (UpstreamTimeout, grpc.StatusCode.DEADLINE_EXCEEDED),
    ],
)
def test_chosen_codes(error: type[GuardError], code: grpc.StatusCode) -> None:
    assert grpc_code_of(status_of(error("x"))) is code


def test_a_taken_port_stops_the_start() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        settings = Settings(grpc_port=port)

        async def start() -> None:
            await start_server(None, settings, None)  # type: ignore[arg-type]

        with pytest.raises(RuntimeError, match=f"127.0.0.1:{port}"):
            asyncio.run(start())
