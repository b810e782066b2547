"""Proxy mode over gRPC (``"protocol": "grpc"``): the guard sends [x; AE(x)] to its upstream's
GRPCInferenceService, in front of a second guard in local mode and in front of a real MLServer
1.7.1's gRPC port, driven by tritonclient[grpc] (and REST: the caller's transport and the
upstream's are independent)."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tg
import tritonclient.http as triton
from PIL import Image
from tritonclient.utils import InferenceServerException

from bench.mlserver import RunningMLServer, run_mlserver
from service.protocol.grpc import grpc_predict_v2_pb2 as pb
from service.protocol.grpc import grpc_predict_v2_pb2_grpc as pb_grpc
from tests.support.promtext import scrape, value
from tests.support.samples import SHIPPED_MNIST, load_samples
from tests.support.server import RunningServer, serve
from tests.support.tiny_models import TinySpec, add_trigger, clean_image

pytestmark = pytest.mark.slow
SPEC = TinySpec()


def proxy_env(url: str, model: str, **extra: str) -> dict[str, str]:
    config = {"tiny": {"url": url, "model": model, "version": "1", "protocol": "grpc"}}
    return {
        "GUARD_UPSTREAMS": json.dumps(config),
        "GUARD_UPSTREAM_PROBE_INTERVAL_S": "0.3",
        "GUARD_INTRA_OP_THREADS": "1",
        **extra,
    }


def fp32(x: np.ndarray, module: object = tg) -> object:
    inp = module.InferInput("images", list(x.shape), "FP32")  # type: ignore[attr-defined]
    inp.set_data_from_numpy(x)
    return inp


def tiny_images() -> np.ndarray:
    """A triggered image of class 3 and a clean one of class 6: (2, 1, 28, 28) in [0, 1]."""
    images = [add_trigger(clean_image(SPEC, 3)), clean_image(SPEC, 6, seed=2)]
    return (np.stack(images)[:, None] / 255.0).astype(np.float32)


@pytest.fixture(scope="module")
def upstream(tiny_set: Path) -> Iterator[RunningServer]:
    with serve([tiny_set], {"GUARD_INTRA_OP_THREADS": "1"}) as server:
        yield server


@pytest.fixture(scope="module")
def front(upstream: RunningServer, tiny_set: Path) -> Iterator[RunningServer]:
    with serve([tiny_set], proxy_env(f"grpc://{upstream.grpc_target}", "tiny")) as server:
        yield server


def test_grpc_round_trip_in_front_of_a_guard(front: RunningServer, upstream: RunningServer) -> None:
    x = tiny_images()
    before = value(scrape(upstream.url), "guard_batch_size_sum", detector="detrigger", model="tiny")
    with tg.InferenceServerClient(front.grpc_target) as client:
        result = client.infer("tiny", [fp32(x)], "1", headers={"x-request-id": "grpc-chain-1"})
    params = result.get_response(as_json=True)["parameters"]
    assert params["guard_flagged"]["string_param"] == "[true, false]"  # the front's verdict
    assert params["guard_detriggered_class"]["string_param"] == "[3, 6]"
    with tg.InferenceServerClient(upstream.grpc_target) as client:
        direct = client.infer("tiny", [fp32(x)])
    np.testing.assert_array_equal(result.as_numpy("logits"), direct.as_numpy("logits"))
    # The upstream got one request of 2N images over gRPC, under the caller's request id.
    after = value(scrape(upstream.url), "guard_batch_size_sum", detector="detrigger", model="tiny")
    assert after - before == 4 + 2
    grpc_calls = [
        r
        for r in upstream.log_records()
        if r.get("route") == "/inference.GRPCInferenceService/ModelInfer"
    ]
    assert "grpc-chain-1" in {r.get("request_id") for r in grpc_calls}


def test_rest_callers_reach_a_grpc_upstream(front: RunningServer) -> None:
    client = triton.InferenceServerClient(front.url.removeprefix("http://"))
    try:
        result = client.infer("tiny", [fp32(tiny_images(), triton)], "1")
    finally:
        client.close()
    assert json.loads(result.get_response()["parameters"]["guard_flagged"]) == [True, False]


def test_block_over_grpc_end_to_end(front: RunningServer) -> None:
    with (
        tg.InferenceServerClient(front.grpc_target) as client,
        pytest.raises(InferenceServerException) as info,
    ):
        client.infer("tiny", [fp32(tiny_images())], parameters={"guard_mode": "block"})
    assert info.value.status() == "StatusCode.PERMISSION_DENIED"


def test_an_upstream_refusal_is_unavailable_and_says_why(
    upstream: RunningServer, tiny_set: Path
) -> None:
    env = proxy_env(f"grpc://{upstream.grpc_target}", "nope")
    with serve([tiny_set], env, wait_ready=False) as wrong:
        reason = wrong.readiness_reason("tiny", "NOT_FOUND")
        assert "NOT_FOUND" in reason  # probed over gRPC: ModelReady refused
        with (
            tg.InferenceServerClient(wrong.grpc_target) as client,
            pytest.raises(InferenceServerException) as info,
        ):
            client.infer("tiny", [fp32(tiny_images())])
        assert info.value.status() == "StatusCode.UNAVAILABLE"  # 502 upstream_error
        assert "refused the request with NOT_FOUND" in info.value.message()
        samples = scrape(wrong.url)
        assert value(samples, "guard_upstream_errors_total", model="tiny", kind="http_4xx") == 1


def test_an_unreachable_upstream_opens_the_breaker(tiny_set: Path, upstream: RunningServer) -> None:
    from bench.processes import free_port

    env = proxy_env(
        f"grpc://127.0.0.1:{free_port()}",  # nothing listens there
        "tiny",
        GUARD_UPSTREAM_BREAKER_FAILURES="2",
        GUARD_UPSTREAM_BREAKER_RESET_S="30",
    )
    with serve([tiny_set], env, wait_ready=False) as lonely:
        # The set loads first (until then a call is refused as loading); then the probe misses.
        assert "UNAVAILABLE" in lonely.readiness_reason("tiny", "UNAVAILABLE")
        with tg.InferenceServerClient(lonely.grpc_target) as client:
            messages = []
            for _ in range(3):
                with pytest.raises(InferenceServerException) as info:
                    client.infer("tiny", [fp32(tiny_images())])
                assert info.value.status() == "StatusCode.UNAVAILABLE"
                messages.append(info.value.message())
        assert "is unavailable" in messages[0]
        assert "circuit breaker is open" in messages[2]
        samples = scrape(lonely.url)
        assert value(samples, "guard_upstream_errors_total", model="tiny", kind="connect") == 2
        assert value(samples, "guard_upstream_breaker_state", model="tiny") == 2


class NonFiniteUpstream(pb_grpc.GRPCInferenceServiceServicer):
    """A gRPC V2 server that is ready and answers NaN logits, raw, for every row it is sent."""

    def ModelReady(self, request: object, context: object) -> object:  # noqa: N802
        return pb.ModelReadyResponse(ready=True)

    def ModelMetadata(self, request: object, context: object) -> object:  # noqa: N802
        tensor = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name="tiny",
            inputs=[tensor(name="images", datatype="FP32", shape=[-1, 1, 28, 28])],
            outputs=[tensor(name="logits", datatype="FP32", shape=[-1, 10])],
        )

    def ModelInfer(self, request: pb.ModelInferRequest, context: object) -> object:  # noqa: N802
        rows = request.inputs[0].shape[0]
        answer = pb.ModelInferResponse(model_name="tiny")
        answer.outputs.add(name="logits", datatype="FP32", shape=[rows, 10])
        answer.raw_output_contents.append(np.full((rows, 10), np.nan, np.float32).tobytes())
        return answer


def test_a_non_finite_grpc_answer_is_never_passed_on(tiny_set: Path) -> None:
    """The REST client's answer checks hold over gRPC: NaN logits are the upstream's failure
    (502 upstream_error, as UNAVAILABLE), counted as invalid_response; no verdict, no answer."""
    fake = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(NonFiniteUpstream(), fake)
    port = fake.add_insecure_port("127.0.0.1:0")
    fake.start()
    try:
        with serve([tiny_set], proxy_env(f"grpc://127.0.0.1:{port}", "tiny")) as guard:
            with (
                tg.InferenceServerClient(guard.grpc_target) as client,
                pytest.raises(InferenceServerException) as info,
            ):
                client.infer("tiny", [fp32(tiny_images())])
            samples = scrape(guard.url)
    finally:
        fake.stop(None)
    assert info.value.status() == "StatusCode.UNAVAILABLE"
    assert "answered OK with a message that is not a usable V2" in info.value.message()
    assert "non-finite logits" in info.value.message()
    kind = {"model": "tiny", "kind": "invalid_response"}
    assert value(samples, "guard_upstream_errors_total", **kind) == 1


# --- in front of MLServer's gRPC port ---------------------------------------------------------
@pytest.fixture(scope="module")
def mlserver() -> Iterator[RunningMLServer]:
    with run_mlserver(SHIPPED_MNIST / "target.onnx", (1, 28, 28), 10, model="target") as server:
        yield server


@pytest.fixture(scope="module")
def mnist_guard(mlserver: RunningMLServer) -> Iterator[RunningServer]:
    config = {"mnist": {"url": mlserver.grpc_url, "model": "target", "version": "1",
                        "protocol": "grpc"}}  # fmt: skip
    env = {
        "GUARD_UPSTREAMS": json.dumps(config),
        "GUARD_UPSTREAM_PROBE_INTERVAL_S": "0.3",
        "GUARD_UPSTREAM_CONNECT_TIMEOUT_S": "0.5",
        "GUARD_UPSTREAM_READ_TIMEOUT_S": "1.0",
        "GUARD_INTRA_OP_THREADS": "1",
    }
    with serve([SHIPPED_MNIST], env, timeout=120) as server:
        yield server


def mnist_x(triggered: bool) -> np.ndarray:
    chosen = [s for s in load_samples(SHIPPED_MNIST) if s.triggered is triggered][:4]
    arrays = [np.asarray(Image.open(io.BytesIO(s.read())).convert("L")) for s in chosen]
    return (np.stack(arrays)[:, None] / 255.0).astype(np.float32)


def test_in_front_of_mlserver_grpc(mlserver: RunningMLServer, mnist_guard: RunningServer) -> None:
    clean, triggered = mnist_x(False), mnist_x(True)
    with tg.InferenceServerClient(f"127.0.0.1:{mlserver.grpc_port}") as client:
        direct = client.infer("target", [fp32(clean)], "1")
    with tg.InferenceServerClient(mnist_guard.grpc_target) as client:
        through = client.infer("target", [fp32(clean)], "1")
        flagged = client.infer("target", [fp32(triggered)], "1")
    # Clean images: the upstream's own outputs, model name and version; nothing flagged.
    np.testing.assert_allclose(through.as_numpy("logits"), direct.as_numpy("logits"), rtol=1e-6)
    response = through.get_response(as_json=True)
    assert (response["model_name"], response["model_version"]) == ("target", "1")
    assert json.loads(response["parameters"]["guard_flagged"]["string_param"]) == [False] * 4
    verdict = flagged.get_response(as_json=True)["parameters"]
    assert json.loads(verdict["guard_flagged"]["string_param"]) == [True] * 4
    samples = scrape(mnist_guard.url)
    assert value(samples, "guard_upstream_ready", model="mnist") == 1
    assert (
        value(samples, "guard_upstream_request_duration_seconds_count", model="mnist", outcome="ok")
        >= 2
    )


def test_a_slow_grpc_upstream_is_deadline_exceeded(
    mlserver: RunningMLServer, mnist_guard: RunningServer
) -> None:
    """The guard's deadline on the upstream call is connect + read timeout (1.5 s here); past
    it the caller gets DEADLINE_EXCEEDED (504 upstream_timeout), not the upstream's 5 s."""
    before = value(
        scrape(mnist_guard.url), "guard_upstream_errors_total", model="mnist", kind="timeout"
    )
    mlserver.slow_down(5.0)
    try:
        with tg.InferenceServerClient(mnist_guard.grpc_target) as client:
            started = time.monotonic()
            with pytest.raises(InferenceServerException) as info:
                client.infer("target", [fp32(mnist_x(False))], "1")
            took = time.monotonic() - started
    finally:
        mlserver.speed_up()
    assert info.value.status() == "StatusCode.DEADLINE_EXCEEDED"
    assert "did not answer within 1.5 s" in info.value.message()
    assert 1.4 < took < 4.0
    after = value(
        scrape(mnist_guard.url), "guard_upstream_errors_total", model="mnist", kind="timeout"
    )
    assert after - before == 1
