"""Schemathesis over both OpenAPI documents against a real uvicorn (issue 19's fuzz stage).

openapi.yaml (/classify, /v1/models, health, metrics) and docs/v2-openapi.yaml (the V2 routes)
are loaded with schemathesis's Python API; each operation gets a bounded number of generated
cases, schema-conforming (positive) and not (negative), some with the model's real name in the
path so that generated bodies reach the parsers and the guard. Two checks on every answer:
``not_a_server_error`` (never a 5xx: the tiny local server has no upstream and an empty queue)
and ``response_schema_conformance`` (the body matches the document for its status).

Every failure is collected (one per operation, check and status, with a curl reproducer) so a
run reports them all; the test fails if there is any, or if fewer than MIN_CASES ran.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import response_schema_conformance

from tests.support.server import RunningServer, serve

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
DOCUMENTS = (REPO / "openapi.yaml", REPO / "docs" / "v2-openapi.yaml")
MIN_CASES = 2000
CHECKS = [not_a_server_error, response_schema_conformance]
MODEL = "tiny"
# Generated cases per operation and generation mode; the pinned half puts the served model's
# name (and version "1") in the path. Operations without inputs stop after a case or two.
BUDGET: dict[str, tuple[int, int]] = {  # operation label -> (positive, negative)
    "POST /classify": (600, 400),
    "POST /v2/models/{model_name}/infer": (400, 300),
    "POST /v2/models/{model_name}/versions/{model_version}/infer": (300, 200),
}
DEFAULT_BUDGET = (40, 40)
# FUZZ_SCALE=5 multiplies every budget, for a deeper run by hand (CI runs 1).
SCALE = max(1, int(os.environ.get("FUZZ_SCALE", "1")))
SERVER_ENV = {
    "GUARD_MAX_BODY_BYTES": str(256 * 1024),
    "GUARD_MAX_IMAGES_PER_REQUEST": "16",
    "GUARD_MAX_IMAGE_PIXELS": str(256 * 256),
    "GUARD_MAX_QUEUE_IMAGES": "4096",
    "GUARD_INTRA_OP_THREADS": "1",
}


@dataclass
class Tally:
    cases: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    failures: dict[tuple[str, str, int], str] = field(default_factory=dict)


@pytest.fixture(scope="module")
def fuzz_server(tiny_set: Path, rgb_set: Path) -> Iterator[RunningServer]:
    with serve([tiny_set, rgb_set], SERVER_ENV) as server:
        yield server


def _pinned(operation: Any) -> dict[str, str]:
    names = {p.name for p in operation.path_parameters}
    return {k: v for k, v in {"model_name": MODEL, "model_version": "1"}.items() if k in names}


def _fuzz_operation(
    operation: Any,
    mode: GenerationMode,
    examples: int,
    pinned: dict[str, str] | None,
    url: str,
    session: requests.Session,
    tally: Tally,
) -> None:
    strategy = operation.as_strategy(generation_mode=mode, path_parameters=pinned)

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],  # no shrinking: each failure is recorded
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def run(case: Any) -> None:
        tally.cases += 1
        response = case.call(base_url=url, session=session, timeout=30)
        tally.statuses[response.status_code] += 1
        try:
            case.validate_response(response, checks=CHECKS)
        except (FailureGroup, Exception) as exc:  # noqa: BLE001 - FailureGroup is a BaseException
            name = type(exc).__name__
            for failure in getattr(exc, "exceptions", [exc]):
                name = getattr(failure, "title", type(failure).__name__)
            key = (operation.label, name, response.status_code)
            if key not in tally.failures:
                tally.failures[key] = (
                    f"{operation.label} [{mode.value}] -> {response.status_code}: {name}\n"
                    f"  body: {response.text[:300]!r}\n"
                    f"  reproduce: {case.as_curl_command(base_url=url)[:1500]}"
                )

    try:
        run()
    except Unsatisfiable:
        # Negative mode of an operation with no inputs: there is nothing to get wrong.
        assert mode is GenerationMode.NEGATIVE, f"{operation.label}: no positive cases"


def test_both_documents_fuzzed_without_server_errors(fuzz_server: RunningServer) -> None:
    tally = Tally()
    started = time.monotonic()
    with requests.Session() as session:
        for document in DOCUMENTS:
            schema = schemathesis.openapi.from_path(document)
            for result in schema.get_all_operations():
                operation = result.ok()
                positive, negative = (
                    n * SCALE for n in BUDGET.get(operation.label, DEFAULT_BUDGET)
                )
                pinned = _pinned(operation)
                for mode, examples in (
                    (GenerationMode.POSITIVE, positive),
                    (GenerationMode.NEGATIVE, negative),
                ):
                    if pinned:  # two thirds with the real model in the path
                        _fuzz_operation(
                            operation, mode, examples * 2 // 3, pinned,
                            fuzz_server.url, session, tally,
                        )  # fmt: skip
                        examples -= examples * 2 // 3
                    _fuzz_operation(
                        operation, mode, examples, None, fuzz_server.url, session, tally
                    )
    elapsed = time.monotonic() - started
    summary = (
        f"{tally.cases} generated cases in {elapsed:.0f} s; statuses "
        f"{dict(sorted(tally.statuses.items()))}"
    )
    print(summary)
    assert not tally.failures, (
        f"{len(tally.failures)} distinct failures ({summary}):\n\n"
        + "\n\n".join(tally.failures.values())
    )
    assert tally.cases >= MIN_CASES, f"the fuzz stage shrank: {summary}"
    assert fuzz_server.process.poll() is None, "the server died during the fuzz run"


def test_v2_errors_answered_before_routing_have_the_protocol_shape(
    fuzz_server: RunningServer,
) -> None:
    """A body over GUARD_MAX_BODY_BYTES is refused by a middleware, before the route's handler;
    on a V2 route the answer must still be the protocol's {"error": "<message>", ...}."""
    schema = schemathesis.openapi.from_path(DOCUMENTS[1])
    operation = schema["/v2/models/{model_name}/infer"]["POST"]
    big = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [0.5] * 60_000}]}
    case = operation.Case(
        path_parameters={"model_name": MODEL}, body=big, media_type="application/json"
    )
    response = case.call(base_url=fuzz_server.url, timeout=30)
    assert response.status_code == 413
    case.validate_response(response, checks=CHECKS)
