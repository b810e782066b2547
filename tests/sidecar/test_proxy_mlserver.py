"""Proxy mode end to end: tritonclient -> the guard -> a real MLServer serving the shipped MNIST
target through a custom runtime (bench/mlserver_runtime/). The guard runs the AE here
and asks MLServer for [x; AE(x)] in one request.

Needs models/mnist (shipped by the training pipeline) and builds .venv-mlserver/ on first use.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable, Iterator

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from PIL import Image
from tritonclient.utils import InferenceServerException

from bench.mlserver import RunningMLServer, run_mlserver
from tests.support.promtext import scrape, value
from tests.support.samples import SHIPPED_MNIST, Sample, load_samples
from tests.support.server import RunningServer, serve

MNIST = SHIPPED_MNIST
pytestmark = pytest.mark.slow
Client = Callable[[str], triton.InferenceServerClient]
READ_TIMEOUT_S = 1.5
BREAKER_RESET_S = 1.0


@pytest.fixture(scope="module")
def upstream() -> Iterator[RunningMLServer]:
    with run_mlserver(MNIST / "target.onnx", (1, 28, 28), 10, model="target") as server:
        yield server


@pytest.fixture(scope="module")
def guard(upstream: RunningMLServer) -> Iterator[RunningServer]:
    env = {
        "GUARD_UPSTREAMS": json.dumps(
            {"mnist": {"url": upstream.url, "model": "target", "version": "1"}}
        ),
        "GUARD_UPSTREAM_READ_TIMEOUT_S": str(READ_TIMEOUT_S),
        "GUARD_UPSTREAM_BREAKER_FAILURES": "2",
        "GUARD_UPSTREAM_BREAKER_RESET_S": str(BREAKER_RESET_S),
        "GUARD_UPSTREAM_PROBE_INTERVAL_S": "0.3",
        "GUARD_UPSTREAM_FORWARD_HEADERS": "traceparent,x-tenant",
        "GUARD_INTRA_OP_THREADS": "1",
    }
    with serve([MNIST], env, timeout=120) as server:
        yield server


def as_x(samples: list[Sample]) -> np.ndarray:
    """(N, 1, 28, 28) float32 in [0, 1] from the PNG samples."""
    arrays = [np.asarray(Image.open(io.BytesIO(s.read())).convert("L")) for s in samples]
    return np.stack(arrays)[:, None].astype(np.float32) / 255.0


def fp32(x: np.ndarray, binary: bool) -> triton.InferInput:
    inp = triton.InferInput("images", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    return inp


def samples(triggered: bool) -> list[Sample]:
    return [s for s in load_samples(MNIST) if s.triggered is triggered]


def test_clean_images_get_exactly_the_upstreams_outputs(
    upstream: RunningMLServer, guard: RunningServer, triton_client: Client
) -> None:
    clean = samples(triggered=False)
    x = as_x(clean)
    direct = triton_client(upstream.url).infer("target", [fp32(x, binary=False)], "1")
    through = triton_client(guard.url).infer(
        "target",
        [fp32(x, binary=True)],
        "1",
        outputs=[triton.InferRequestedOutput("logits", binary_data=True)],
        request_id="abc",
        headers={"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                 "x-tenant": "t1", "x-secret": "never-forwarded"},
    )  # fmt: skip
    want, got = direct.as_numpy("logits"), through.as_numpy("logits")
    assert got.shape == want.shape == (len(clean), 10) and got.dtype == np.float32
    # The same model on a batch of 2N instead of N: equal up to float rounding.
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    assert got.argmax(1).tolist() == want.argmax(1).tolist() == [s.label for s in clean]
    response = through.get_response()
    # The upstream's own response: its model name and version, id, parameters, output.
    assert response["model_name"] == "target" and response["model_version"] == "1"
    assert response["id"] == "abc"
    params = response["parameters"]
    assert params["served_by"] == "mlserver-onnx-logits"
    seen = json.loads(params["seen_headers"])
    assert "traceparent" in seen and "x-tenant" in seen and "x-request-id" in seen
    assert "x-secret" not in seen
    assert json.loads(params["guard_flagged"]) == [False] * len(clean)
    assert params["guard_model_set"] == "mnist"
    (out,) = response["outputs"]
    assert out["name"] == "logits" and out["parameters"]["content_type"] == "np"


def test_triggered_images_are_flagged(guard: RunningServer, triton_client: Client) -> None:
    triggered = samples(triggered=True)
    x = as_x(triggered)
    result = triton_client(guard.url).infer("mnist", [fp32(x, binary=True)])
    params = result.get_response()["parameters"]
    assert json.loads(params["guard_flagged"]) == [True] * len(triggered)
    assert json.loads(params["guard_predicted_class"]) == [0] * len(triggered)  # the backdoor
    assert json.loads(params["guard_detriggered_class"]) == [s.label for s in triggered]
    assert result.as_numpy("logits").argmax(1).tolist() == [0] * len(triggered)
    # repair: the upstream's outputs on the de-triggered images instead.
    repaired = triton_client(guard.url).infer(
        "mnist", [fp32(x, binary=True)], parameters={"guard_mode": "repair"}
    )
    assert repaired.as_numpy("logits").argmax(1).tolist() == [s.label for s in triggered]


def test_detector_repaired_runs_the_repaired_target_here(
    guard: RunningServer, triton_client: Client
) -> None:
    """The shipped set's audit repair (detectors.repaired) runs in the guard; MLServer gets the
    images alone and answers with the backdoored target, which the repaired graph overrules."""
    items = samples(triggered=False) + samples(triggered=True)
    x = as_x(items)
    params = {"guard_detector": "repaired", "guard_mode": "repair"}
    result = triton_client(guard.url).infer("mnist", [fp32(x, binary=True)], parameters=params)
    verdict = result.get_response()["parameters"]
    assert verdict["guard_detector"] == "repaired"
    assert json.loads(verdict["guard_flagged"]) == [s.triggered for s in items]
    assert json.loads(verdict["guard_detriggered_class"]) == [s.label for s in items]
    # Flagged rows are the repaired target's logits: every image gets its own class back.
    assert result.as_numpy("logits").argmax(1).tolist() == [s.label for s in items]


def test_classify_and_metadata_in_proxy_mode(
    guard: RunningServer, triton_client: Client, upstream: RunningMLServer
) -> None:
    items = samples(triggered=False)[:2] + samples(triggered=True)[:2]
    files = [("images", (s.path.name, s.read(), "image/png")) for s in items]
    r = httpx.post(guard.url + "/classify?mode=block", files=files, timeout=30)
    assert r.status_code == 200, r.text
    body = r.json()
    assert [x["flagged"] for x in body["results"]] == [False, False, True, True]
    assert body["blocked"] == 2
    assert httpx.get(guard.url + "/readyz").status_code == 200
    meta = triton_client(guard.url).get_model_metadata("target", "1")
    assert meta["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]}]
    assert meta["parameters"]["guard_upstream"] == upstream.url


def wait_for(check: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.1)
    return False


def test_a_slow_upstream_gives_504(
    guard: RunningServer, upstream: RunningMLServer, triton_client: Client
) -> None:
    x = as_x(samples(triggered=False)[:1])
    client = triton_client(guard.url)
    upstream.slow_down(READ_TIMEOUT_S + 4)
    try:
        started = time.monotonic()
        with pytest.raises(InferenceServerException) as err:
            client.infer("mnist", [fp32(x, binary=True)])
        took = time.monotonic() - started
    finally:
        upstream.speed_up()
    assert err.value.status() == "504"
    assert "did not answer within" in err.value.message()
    assert READ_TIMEOUT_S - 0.1 < took < READ_TIMEOUT_S + 3.0  # not the upstream's 5.5 s
    m = scrape(guard.url)
    assert value(m, "guard_upstream_errors_total", model="mnist", kind="timeout") >= 1
    # One timeout does not open the breaker (2 failures do); the next request is served
    # (MLServer answers it while the slow one still sleeps).
    assert client.infer("mnist", [fp32(x, binary=True)]).as_numpy("logits").shape == (1, 10)


def test_stopped_upstream_fails_fast_then_the_guard_recovers(
    guard: RunningServer, upstream: RunningMLServer, triton_client: Client
) -> None:
    x = as_x(samples(triggered=False)[:1])
    url = guard.url + "/v2/models/mnist/infer"
    payload = {"inputs": [{"name": "images", "shape": [1, 1, 28, 28], "datatype": "FP32",
                           "data": x.reshape(-1).tolist()}]}  # fmt: skip
    upstream.stop()
    try:
        first = httpx.post(url, json=payload, timeout=10)
        second = httpx.post(url, json=payload, timeout=10)
        assert first.status_code == second.status_code == 502
        assert first.json()["type"] == "upstream_unreachable"
        assert "unreachable" in first.json()["error"]
        # Two failures opened the breaker: the guard answers 503 at once, without calling.
        started = time.monotonic()
        third = httpx.post(url, json=payload, timeout=10)
        assert third.status_code == 503, third.text
        assert time.monotonic() - started < 1.0
        assert third.json()["type"] == "upstream_unavailable"
        assert int(third.headers["retry-after"]) >= 1
        m = scrape(guard.url)
        assert value(m, "guard_upstream_breaker_state", model="mnist") == 2
        assert value(m, "guard_upstream_errors_total", model="mnist", kind="breaker_open") >= 1
        assert value(m, "guard_upstream_errors_total", model="mnist", kind="connect") >= 2
        # Readiness follows the upstream.
        assert wait_for(lambda: httpx.get(guard.url + "/readyz").status_code == 503, 5)
        assert httpx.get(guard.url + "/v2/health/ready").status_code == 503
        assert "upstream" in httpx.get(guard.url + "/readyz").json()["models"]["mnist"]
    finally:
        upstream.start()
    # Restarted upstream: the breaker's probe closes it; the guard itself was never restarted.
    assert wait_for(lambda: httpx.get(guard.url + "/readyz").status_code == 200, 10)
    time.sleep(BREAKER_RESET_S)
    client = triton_client(guard.url)
    result = client.infer("mnist", [fp32(x, binary=True)])
    assert result.as_numpy("logits").shape == (1, 10)
    m = scrape(guard.url)
    assert value(m, "guard_upstream_breaker_state", model="mnist") == 0
    assert value(m, "guard_upstream_ready", model="mnist") == 1
    assert (
        value(m, "guard_upstream_request_duration_seconds_count", model="mnist", outcome="ok") > 0
    )
