"""Fixtures of the sidecar tests: a tritonclient factory."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import tritonclient.http as triton


@pytest.fixture
def triton_client() -> Callable[[str], triton.InferenceServerClient]:
    """tritonclient's HTTP client for a base URL such as http://127.0.0.1:8123."""
    made: list[triton.InferenceServerClient] = []

    def make(url: str) -> triton.InferenceServerClient:
        client = triton.InferenceServerClient(
            url.removeprefix("http://"), connection_timeout=30.0, network_timeout=30.0
        )
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()
