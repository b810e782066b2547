"""Proxy mode over binary tensor data: a guard in proxy mode in front of a second guard in
local mode, which is a V2 server that speaks the binary extension (as Triton and KServe do;
MLServer's REST server does not). Also: an upstream 4xx becomes a 502 that quotes it, and the
request id reaches the upstream."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from tests.support.server import RunningServer, serve
from tests.support.tiny_models import TinySpec, add_trigger, clean_image

pytestmark = pytest.mark.slow
Client = Callable[[str], triton.InferenceServerClient]
SPEC = TinySpec()


@pytest.fixture(scope="module")
def upstream(tiny_set: Path) -> Iterator[RunningServer]:
    with serve([tiny_set], {"GUARD_INTRA_OP_THREADS": "1"}) as server:
        yield server


def proxy_env(upstream: RunningServer, model: str) -> dict[str, str]:
    config = {"tiny": {"url": upstream.url, "model": model, "version": "1", "binary": True}}
    return {
        "GUARD_UPSTREAMS": json.dumps(config),
        "GUARD_UPSTREAM_PROBE_INTERVAL_S": "0.3",
        "GUARD_INTRA_OP_THREADS": "1",
    }


@pytest.fixture(scope="module")
def front(upstream: RunningServer, tiny_set: Path) -> Iterator[RunningServer]:
    with serve([tiny_set], proxy_env(upstream, "tiny")) as server:
        yield server


def test_binary_upstream_round_trip(
    front: RunningServer, upstream: RunningServer, triton_client: Client
) -> None:
    images = [add_trigger(clean_image(SPEC, 3)), clean_image(SPEC, 6, seed=2)]
    x = np.stack(images)[:, None].astype(np.float32) / 255.0
    inp = triton.InferInput("images", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=True)
    result = triton_client(front.url).infer(
        "tiny", [inp], "1", headers={"X-Request-ID": "chain-123"}
    )
    params = result.get_response()["parameters"]
    assert json.loads(params["guard_flagged"]) == [True, False]  # the front's own verdict
    assert json.loads(params["guard_detriggered_class"]) == [3, 6]
    direct = triton_client(upstream.url).infer("tiny", [inp])
    np.testing.assert_array_equal(result.as_numpy("logits"), direct.as_numpy("logits"))
    # The upstream got one binary request of 2N images, under the caller's request id.
    counted = httpx.get(upstream.url + "/metrics").text
    assert 'guard_batch_size_sum{detector="detrigger",model="tiny"} 6.0' in counted  # 4 + 2
    ids = {r.get("request_id") for r in upstream.log_records() if r["message"] == "request"}
    assert "chain-123" in ids


def test_an_upstream_refusal_is_a_502_that_says_why(
    upstream: RunningServer, tiny_set: Path
) -> None:
    with serve([tiny_set], proxy_env(upstream, "nope"), wait_ready=False) as wrong:
        assert "404" in wrong.readiness_reason("tiny", "404")  # loaded, then probed: why not
        ready = httpx.get(wrong.url + "/readyz")
        assert ready.status_code == 503 and "404" in ready.json()["models"]["tiny"], ready.text
        client = triton.InferenceServerClient(wrong.url.removeprefix("http://"))
        x = np.zeros((1, 1, 28, 28), dtype=np.float32)
        inp = triton.InferInput("images", list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=True)
        # The model set is loaded but its upstream is not ready: the call still goes out.
        with pytest.raises(InferenceServerException) as err:
            client.infer("tiny", [inp])
        client.close()
    assert err.value.status() == "502"
    assert "refused the request with 404" in err.value.message()
    assert "no model named 'nope'" in err.value.message()


def test_promtool_finds_no_naming_problems_in_the_upstream_metrics(front: RunningServer) -> None:
    text = httpx.get(front.url + "/metrics").text
    assert 'guard_upstream_breaker_state{model="tiny"} 0.0' in text
    assert 'guard_upstream_errors_total{kind="timeout",model="tiny"} 0.0' in text
    check = subprocess.run(
        ["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=30
    )
    assert check.returncode == 0 and not check.stdout.strip(), check.stdout + check.stderr
