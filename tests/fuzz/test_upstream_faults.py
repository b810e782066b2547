"""Proxy mode in front of a misbehaving upstream (issue 19): a real guard under uvicorn, a fake
V2 upstream (tests/fuzz/fake_upstream.py) whose answers each test breaks in one way.

Whatever the upstream does, the guard answers 502/503/504 (or, for non-finite logits, treats
the image as flagged), never a 500; a triggered image is never answered in mode block; and
once the upstream behaves again, the guard recovers: a correct verdict and /readyz 200.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.fuzz.fake_upstream import BAD_METADATA, MODEL, FakeUpstream
from tests.support import promtext
from tests.support.server import RunningServer, serve
from tests.support.tiny_models import TinySpec, add_trigger, clean_image, png_bytes

pytestmark = pytest.mark.slow

SPEC = TinySpec()
LABEL = 3
CLEAN = clean_image(SPEC, LABEL, seed=5)
TRIGGERED = add_trigger(CLEAN)
UPSTREAM_ERRORS = (502, 503, 504)
READ_TIMEOUT_S = 1.0
RECOVERY_S = 20.0
# Faults in the upstream's answer to an inference (the fake's FakeUpstream.answer).
PARSER_FAULTS = [
    "uint8_overflow",
    "huge_int",
    "deep_json",
    "not_json",
    "datatype_list",
    "bytes_logits",
    "shape_data_mismatch",
]
SHAPE_FAULTS = ["wrong_rows", "wrong_classes"]
TRANSPORT_FAULTS = ["http_500", "slow", "drop"]
NON_FINITE_FAULTS = ["nan_detriggered", "nan_all", "inf_input_half"]


BINARY_FAULTS = [
    "bin_size_past_end",
    "bin_size_odd",
    "bin_uint8_logits",
    "bin_header_junk",
    "bin_header_past_end",
]


def proxy_env(upstream: FakeUpstream, binary: bool = False) -> dict[str, str]:
    config = {"tiny": {"url": upstream.url, "model": MODEL, "version": "1", "binary": binary}}
    return {
        "GUARD_UPSTREAMS": json.dumps(config),
        "GUARD_UPSTREAM_PROBE_INTERVAL_S": "0.3",
        "GUARD_UPSTREAM_READ_TIMEOUT_S": str(READ_TIMEOUT_S),
        "GUARD_UPSTREAM_BREAKER_FAILURES": "3",
        "GUARD_UPSTREAM_BREAKER_RESET_S": "0.5",
        "GUARD_INTRA_OP_THREADS": "1",
    }


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream(SPEC, slow_s=READ_TIMEOUT_S + 2.0) as fake:
        yield fake


@pytest.fixture(scope="module")
def guard(upstream: FakeUpstream, tiny_set: Path) -> Iterator[RunningServer]:
    with serve([tiny_set], proxy_env(upstream)) as server:
        yield server


@pytest.fixture
def behaving(upstream: FakeUpstream, guard: RunningServer) -> Iterator[FakeUpstream]:
    """Each test starts and ends with a behaving upstream and a recovered guard."""
    upstream.fault = "ok"
    assert_recovers(guard)
    yield upstream
    upstream.fault = "ok"


# --- requests -----------------------------------------------------------------------------
def classify(guard: RunningServer, mode: str = "block") -> httpx.Response:
    files = [
        ("images", ("clean.png", png_bytes(CLEAN), "image/png")),
        ("images", ("triggered.png", png_bytes(TRIGGERED), "image/png")),
    ]
    return httpx.post(f"{guard.url}/classify", params={"mode": mode}, files=files, timeout=30)


def v2_infer(guard: RunningServer, image: np.ndarray, mode: str) -> httpx.Response:
    x = (image.astype(np.float32) / 255.0)[None, None]  # (1, 1, H, W)
    body = {
        "inputs": [
            {
                "name": "images",
                "datatype": "FP32",
                "shape": list(x.shape),
                "data": x.ravel().tolist(),
            }
        ],
        "parameters": {"guard_mode": mode},
    }
    return httpx.post(f"{guard.url}/v2/models/{MODEL}/infer", json=body, timeout=30)


def v2_bytes_infer(guard: RunningServer, image: np.ndarray, mode: str) -> httpx.Response:
    body = {
        "inputs": [
            {
                "name": "images",
                "datatype": "BYTES",
                "shape": [1],
                "data": [base64.b64encode(png_bytes(image)).decode()],
            }
        ],
        "parameters": {"guard_mode": mode},
    }
    return httpx.post(f"{guard.url}/v2/models/{MODEL}/infer", json=body, timeout=30)


def describe(response: httpx.Response) -> str:
    return (
        f"{response.request.method} {response.request.url.path} -> {response.status_code}: "
        + (response.text[:400])
    )


# --- what must hold -----------------------------------------------------------------------
def assert_correct_verdict(response: httpx.Response) -> None:
    """A 200 to classify() in mode block: the clean image answered, the triggered one blocked."""
    assert response.status_code == 200, describe(response)
    clean, triggered = response.json()["results"]
    assert clean["outcome"] == "answered", describe(response)
    assert clean["answer"]["class"] == LABEL, describe(response)
    assert triggered["flagged"] and triggered["outcome"] == "blocked", describe(response)


def assert_classify_safe(
    response: httpx.Response, *, allow_flagged: bool = False, allow_correct: bool = False
) -> None:
    """Never a 500; never 'answered' for the triggered image. A 200 is allowed only where the
    guard may treat the upstream's non-finite logits as flagged (``allow_flagged``), or, where
    the upstream's answers themselves are sound (``allow_correct``), with the correct verdict."""
    assert response.status_code != 500, describe(response)
    if response.status_code != 200:
        assert response.status_code in UPSTREAM_ERRORS, describe(response)
        body = response.json()
        assert body["error"]["type"].startswith("upstream"), describe(response)
        return
    if allow_correct:
        assert_correct_verdict(response)
        return
    assert allow_flagged, f"a 200 from a failing upstream: {describe(response)}"
    results = response.json()["results"]
    triggered = results[1]
    assert triggered["outcome"] != "answered", f"fail-open: {describe(response)}"
    assert triggered["flagged"] is True and triggered["answer"] is None, describe(response)
    for result in results:
        # The response schema: a finite float, never null.
        assert isinstance(result["score"], (int, float)), describe(response)
        assert np.isfinite(result["score"]), describe(response)


def assert_v2_block_safe(response: httpx.Response, *, allow_flagged: bool = False) -> None:
    assert response.status_code != 500, describe(response)
    allowed = UPSTREAM_ERRORS + ((403,) if allow_flagged else ())
    assert response.status_code in allowed, f"triggered image not refused: {describe(response)}"
    body = response.json()
    assert isinstance(body["error"], str), f"not the V2 error shape: {describe(response)}"


def assert_recovers(guard: RunningServer) -> None:
    """Within RECOVERY_S of the upstream behaving: /readyz 200 and correct verdicts."""
    deadline = time.monotonic() + RECOVERY_S
    last = ""
    while time.monotonic() < deadline:
        ready = httpx.get(f"{guard.url}/readyz", timeout=10)
        response = classify(guard)
        if ready.status_code == 200 and response.status_code == 200:
            assert_correct_verdict(response)
            break
        last = f"readyz {ready.status_code}; {describe(response)}"
        time.sleep(0.3)
    else:
        pytest.fail(f"the guard did not recover within {RECOVERY_S} s: {last}")
    assert v2_infer(guard, TRIGGERED, "block").status_code == 403
    answer = v2_infer(guard, CLEAN, "flag")
    assert answer.status_code == 200, describe(answer)
    params = answer.json()["parameters"]
    assert json.loads(params["guard_flagged"]) == [False], describe(answer)
    assert json.loads(params["guard_predicted_class"]) == [LABEL], describe(answer)


def upstream_error_count(guard: RunningServer) -> float:
    return sum(promtext.series(promtext.scrape(guard.url), "guard_upstream_errors_total").values())


# --- the faults ---------------------------------------------------------------------------
@pytest.mark.parametrize("fault", PARSER_FAULTS + SHAPE_FAULTS)
def test_a_bad_upstream_answer_is_a_502_and_counted(
    fault: str, behaving: FakeUpstream, guard: RunningServer
) -> None:
    errors_before = upstream_error_count(guard)
    behaving.fault = fault
    responses = [classify(guard), classify(guard, "flag")]
    for response in responses:
        assert_classify_safe(response)
    assert_v2_block_safe(v2_infer(guard, TRIGGERED, "block"))
    assert_v2_block_safe(v2_bytes_infer(guard, TRIGGERED, "block"))
    flag = v2_infer(guard, CLEAN, "flag")
    assert flag.status_code in UPSTREAM_ERRORS, describe(flag)
    assert upstream_error_count(guard) > errors_before, "upstream errors not counted"
    assert httpx.get(f"{guard.url}/healthz", timeout=10).status_code == 200
    behaving.fault = "ok"
    assert_recovers(guard)


@pytest.mark.parametrize("fault", TRANSPORT_FAULTS)
def test_a_failing_upstream_is_a_502_503_or_504_and_the_guard_recovers(
    fault: str, behaving: FakeUpstream, guard: RunningServer
) -> None:
    behaving.fault = fault
    statuses = []
    for _ in range(4):  # past the breaker's 3 failures: then 503 without calling
        response = classify(guard)
        assert_classify_safe(response)
        statuses.append(response.status_code)
    assert_v2_block_safe(v2_infer(guard, TRIGGERED, "block"))
    expected = {"http_500": 502, "drop": 502, "slow": 504}[fault]
    assert statuses[0] == expected, statuses
    assert 503 in statuses, f"the breaker never opened: {statuses}"
    behaving.fault = "ok"
    assert_recovers(guard)


@pytest.mark.parametrize("fault", NON_FINITE_FAULTS)
def test_non_finite_logits_never_answer_a_triggered_image(
    fault: str, behaving: FakeUpstream, guard: RunningServer
) -> None:
    """docs/service.md says which: a 502, or the image counted as flagged. Either way never
    'answered' and never a score that is not a number."""
    behaving.fault = fault
    assert_classify_safe(classify(guard), allow_flagged=True)
    assert_v2_block_safe(v2_infer(guard, TRIGGERED, "block"), allow_flagged=True)
    assert_v2_block_safe(v2_bytes_infer(guard, TRIGGERED, "block"), allow_flagged=True)
    flag = v2_infer(guard, TRIGGERED, "flag")
    assert flag.status_code != 500, describe(flag)
    if flag.status_code == 200:
        params = flag.json()["parameters"]
        assert json.loads(params["guard_flagged"]) == [True], describe(flag)
        assert all(np.isfinite(json.loads(params["guard_scores"]))), describe(flag)
    else:
        assert flag.status_code in UPSTREAM_ERRORS, describe(flag)
    behaving.fault = "ok"
    assert_recovers(guard)


def test_non_object_metadata_is_not_ready_and_recovers(tiny_set: Path) -> None:
    """The upstream's model metadata is [1, 2, 3] when the guard starts: /readyz must not say
    ready, requests get 502/503 or (the upstream's inferences are sound) the correct verdict,
    never a 500, and once the metadata is an object again the guard reads it and serves."""
    with FakeUpstream(SPEC) as upstream:
        upstream.fault = "metadata_list"
        with serve([tiny_set], proxy_env(upstream), wait_ready=False) as guard:
            time.sleep(1.5)  # several probes
            ready = httpx.get(f"{guard.url}/readyz", timeout=10)
            assert ready.status_code == 503, describe(ready)
            assert_classify_safe(classify(guard), allow_correct=True)
            assert_v2_block_safe(v2_infer(guard, TRIGGERED, "block"), allow_flagged=True)
            meta = httpx.get(f"{guard.url}/v2/models/{MODEL}", timeout=10)
            assert meta.status_code != 500, describe(meta)
            upstream.fault = "ok"
            assert_recovers(guard)
            meta = httpx.get(f"{guard.url}/v2/models/{MODEL}", timeout=10)
            assert meta.status_code == 200, describe(meta)
            assert meta.json()["outputs"][0]["name"] == "logits", describe(meta)


def assert_metadata_sound(response: httpx.Response) -> None:
    """GET /v2/models/<m>: never a 500; a 200 is a V2 model metadata object."""
    assert response.status_code != 500, describe(response)
    if response.status_code != 200:
        assert isinstance(response.json()["error"], str), describe(response)
        return
    meta = response.json()
    assert isinstance(meta.get("name"), str), describe(response)
    for key in ("inputs", "outputs"):
        assert isinstance(meta[key], list), describe(response)
        for tensor in meta[key]:
            assert isinstance(tensor, dict), describe(response)
            assert isinstance(tensor.get("name"), str), describe(response)
            assert isinstance(tensor.get("datatype"), str), describe(response)
            assert isinstance(tensor.get("shape"), list), describe(response)
            assert all(isinstance(d, int) for d in tensor["shape"]), describe(response)


@pytest.mark.parametrize("fault", sorted(set(BAD_METADATA) - {"metadata_list"}))
def test_malformed_metadata_never_gives_a_500(fault: str, tiny_set: Path) -> None:
    """Other metadata that is not a V2 model metadata object, read when the guard starts:
    whether the guard calls the upstream not ready or falls back to its defaults, no request
    500s, a 200 carries the correct verdict, and it serves once the metadata is sound."""
    with FakeUpstream(SPEC) as upstream:
        upstream.fault = fault
        with serve([tiny_set], proxy_env(upstream), wait_ready=False) as guard:
            time.sleep(1.5)  # several probes
            ready = httpx.get(f"{guard.url}/readyz", timeout=10)
            assert ready.status_code in (200, 503), describe(ready)
            assert_classify_safe(classify(guard), allow_correct=True)
            assert_v2_block_safe(v2_infer(guard, TRIGGERED, "block"), allow_flagged=True)
            assert_metadata_sound(httpx.get(f"{guard.url}/v2/models/{MODEL}", timeout=10))
            upstream.fault = "ok"
            assert_recovers(guard)
            assert_metadata_sound(httpx.get(f"{guard.url}/v2/models/{MODEL}", timeout=10))


def test_metadata_that_turns_bad_later_does_not_give_500s(
    behaving: FakeUpstream, guard: RunningServer
) -> None:
    """Metadata read while the upstream behaved stays usable; requests never 500 either way."""
    behaving.fault = "metadata_list"
    time.sleep(1.0)
    assert_classify_safe(classify(guard), allow_correct=True)
    meta = httpx.get(f"{guard.url}/v2/models/{MODEL}", timeout=10)
    assert meta.status_code != 500, describe(meta)
    behaving.fault = "ok"
    assert_recovers(guard)


def test_the_guard_survives_every_fault_in_a_row(
    behaving: FakeUpstream, guard: RunningServer
) -> None:
    """All faults back to back, without recovering in between, then one recovery."""
    for fault in PARSER_FAULTS + SHAPE_FAULTS + TRANSPORT_FAULTS + NON_FINITE_FAULTS:
        behaving.fault = fault
        response = classify(guard)
        assert_classify_safe(response, allow_flagged=fault in NON_FINITE_FAULTS)
    assert guard.process.poll() is None
    behaving.fault = "ok"
    assert_recovers(guard)


# --- binary tensor data (an upstream such as Triton or KServe: binary: true) ---------------
@pytest.fixture(scope="module")
def binary_guard(upstream: FakeUpstream, tiny_set: Path) -> Iterator[RunningServer]:
    with serve([tiny_set], proxy_env(upstream, binary=True)) as server:
        yield server


@pytest.mark.parametrize("fault", BINARY_FAULTS + ["uint8_overflow", "deep_json"])
def test_a_bad_binary_answer_is_a_502(
    fault: str, behaving: FakeUpstream, binary_guard: RunningServer
) -> None:
    assert_recovers(binary_guard)
    errors_before = upstream_error_count(binary_guard)
    behaving.fault = fault
    assert_classify_safe(classify(binary_guard))
    assert_v2_block_safe(v2_infer(binary_guard, TRIGGERED, "block"))
    flag = v2_infer(binary_guard, CLEAN, "flag")
    assert flag.status_code in UPSTREAM_ERRORS, describe(flag)
    assert upstream_error_count(binary_guard) > errors_before, "upstream errors not counted"
    behaving.fault = "ok"
    assert_recovers(binary_guard)


def test_binary_nan_logits_never_answer_a_triggered_image(
    behaving: FakeUpstream, binary_guard: RunningServer
) -> None:
    assert_recovers(binary_guard)
    behaving.fault = "bin_nan_detriggered"
    assert_classify_safe(classify(binary_guard), allow_flagged=True)
    assert_v2_block_safe(v2_infer(binary_guard, TRIGGERED, "block"), allow_flagged=True)
    behaving.fault = "ok"
    assert_recovers(binary_guard)


TRACE = {
    "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    "tracestate": "guard=1",
    "b3": "4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
}


@pytest.mark.parametrize("route", ["classify", "v2"])
def test_both_routes_forward_the_trace_headers_upstream(
    route: str, behaving: FakeUpstream, guard: RunningServer
) -> None:
    """Issue 19 #8: /classify forwarded only x-request-id; V2 forwarded the allow-list."""
    headers = {**TRACE, "x-secret": "not-forwarded"}
    if route == "classify":
        files = [("images", ("clean.png", png_bytes(CLEAN), "image/png"))]
        r = httpx.post(f"{guard.url}/classify", files=files, headers=headers, timeout=30)
    else:
        x = (CLEAN.astype(np.float32) / 255.0)[None, None]
        tensor = {"name": "images", "datatype": "FP32", "shape": list(x.shape),
                  "data": x.ravel().tolist()}  # fmt: skip
        r = httpx.post(f"{guard.url}/v2/models/{MODEL}/infer", json={"inputs": [tensor]},
                       headers=headers, timeout=30)  # fmt: skip
    assert r.status_code == 200, r.text
    sent = behaving.last_headers
    assert {k: sent.get(k) for k in TRACE} == TRACE
    assert "x-secret" not in sent and sent.get("x-request-id")
