"""V2 over gRPC in local mode: the real tritonclient[grpc] against a real uvicorn whose lifespan
runs the gRPC server; the same request path, verdict, modes, API key, limits and metrics as
REST, errors as gRPC status codes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as tg
from tritonclient.utils import InferenceServerException

from service.protocol.grpc import grpc_predict_v2_pb2 as pb
from service.protocol.grpc import grpc_predict_v2_pb2_grpc as pb_grpc
from tests.support.promtext import scrape, value
from tests.support.server import RunningServer, serve
from tests.support.tiny_models import TinySpec, add_trigger, clean_image, png_bytes

pytestmark = pytest.mark.slow
SPEC = TinySpec()
KEY = "grpc-test-key-0123456789"
AUTH = {"x-api-key": KEY}
ENV = {
    "GUARD_INTRA_OP_THREADS": "1",
    "GUARD_API_KEYS": KEY,
    "GUARD_MAX_BODY_BYTES": str(256 * 1024),
    "GUARD_MAX_IMAGES_PER_REQUEST": "40",
}
INFER = "/inference.GRPCInferenceService/ModelInfer"


@pytest.fixture(scope="module")
def server(tiny_set: Path) -> Iterator[RunningServer]:
    with serve([tiny_set], ENV) as running:
        yield running


@pytest.fixture
def client(server: RunningServer) -> Iterator[tg.InferenceServerClient]:
    made = tg.InferenceServerClient(server.grpc_target)
    yield made
    made.close()


def images(triggered: list[bool]) -> np.ndarray:
    """(N, 1, 28, 28) float32 in [0, 1]; image i is of class i + 2."""
    x = [
        add_trigger(clean_image(SPEC, i + 2, seed=i)) if t else clean_image(SPEC, i + 2, seed=i)
        for i, t in enumerate(triggered)
    ]
    return (np.stack(x)[:, None] / 255.0).astype(np.float32)


def fp32(x: np.ndarray) -> tg.InferInput:
    inp = tg.InferInput("images", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return inp


def refused(call: object) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as info:
        call()  # type: ignore[operator]
    return info.value


def test_health_and_metadata(client: tg.InferenceServerClient) -> None:
    assert client.is_server_live()  # health follows GUARD_PROTECT_HEALTH (off)
    assert client.is_server_ready()
    assert client.is_model_ready("tiny", headers=AUTH)
    assert client.is_model_ready("tiny", "1", headers=AUTH)
    meta = client.get_model_metadata("tiny", headers=AUTH, as_json=True)
    assert meta["versions"] == ["1"] and meta["platform"] == "detrigger-guard_local"
    assert meta["inputs"][0] == {
        "name": "images",
        "datatype": "FP32",
        "shape": ["-1", "1", "28", "28"],
    }
    assert client.get_server_metadata(headers=AUTH, as_json=True)["name"] == "detrigger-guard"
    assert refused(lambda: client.is_model_ready("tiny", "7", headers=AUTH)).status() == (
        "StatusCode.NOT_FOUND"
    )


def test_api_key_from_metadata(client: tg.InferenceServerClient) -> None:
    x = fp32(images([False]))
    for headers in ({}, {"x-api-key": "wrong-key-wrong-key-1"}):
        error = refused(lambda h=headers: client.infer("tiny", [x], headers=h))
        assert error.status() == "StatusCode.UNAUTHENTICATED"
    ok = client.infer("tiny", [x], headers={"authorization": f"Bearer {KEY}"})
    assert ok.as_numpy("logits").shape == (1, 10)


def test_infer_raw_contents_carries_the_verdict(
    client: tg.InferenceServerClient, server: RunningServer
) -> None:
    x = images([False, True])
    result = client.infer("tiny", [fp32(x)], headers=AUTH, request_id="g-1")
    response = result.get_response(as_json=True)
    params = {k: next(iter(v.values())) for k, v in response["parameters"].items()}
    assert json.loads(params["guard_flagged"]) == [False, True]
    assert int(params["guard_flagged_count"]) == 1
    assert json.loads(params["guard_predicted_class"])[0] == 2
    assert json.loads(params["guard_detriggered_class"]) == [2, 3]
    assert params["guard_mode"] == "flag" and params["guard_detector"] == "detrigger"
    assert response["id"] == "g-1" and response["model_version"] == "1"
    assert len(result.get_response().raw_output_contents) == 1
    # The same request path as REST: the same logits for the same images.
    rest = httpx.post(
        server.url + "/v2/models/tiny/infer",
        headers=AUTH,
        json={"inputs": [{"name": "images", "datatype": "FP32", "shape": list(x.shape),
                          "data": x.reshape(-1).tolist()}]},
    ).json()  # fmt: skip
    np.testing.assert_allclose(
        result.as_numpy("logits").reshape(-1), rest["outputs"][0]["data"], rtol=1e-6
    )


def test_modes_block_and_repair(client: tg.InferenceServerClient) -> None:
    x = fp32(images([False, True]))
    error = refused(
        lambda: client.infer("tiny", [x], headers=AUTH, parameters={"guard_mode": "block"})
    )
    assert error.status() == "StatusCode.PERMISSION_DENIED"
    assert "image(s) [1] of 2 carry a backdoor trigger" in error.message()
    flag = client.infer("tiny", [x], headers=AUTH).as_numpy("logits")
    repair = client.infer("tiny", [x], headers=AUTH, parameters={"guard_mode": "repair"})
    logits = repair.as_numpy("logits")
    np.testing.assert_array_equal(logits[0], flag[0])
    assert logits[1].argmax() == 3 != flag[1].argmax()  # the de-triggered copy's answer
    assert '"guard_repaired"' in json.dumps(repair.get_response(as_json=True))


def test_png_files_as_bytes(client: tg.InferenceServerClient) -> None:
    files = np.array([png_bytes(add_trigger(clean_image(SPEC, 5)))], dtype=object)
    inp = tg.InferInput("files", [1], "BYTES")
    inp.set_data_from_numpy(files)
    params = client.infer("tiny", [inp], headers=AUTH).get_response(as_json=True)["parameters"]
    assert params["guard_flagged"]["string_param"] == "[true]"


@pytest.mark.parametrize(
    ("model", "inputs", "params", "code", "says"),
    [
        ("nope", None, {}, "NOT_FOUND", "no model named 'nope'"),
        ("tiny", None, {"guard_mode": "ignore"}, "INVALID_ARGUMENT", "guard_mode 'ignore'"),
        ("tiny", "wrong_size", {}, "INVALID_ARGUMENT", "28"),
        ("tiny", "too_many", {}, "RESOURCE_EXHAUSTED", "40"),
        ("tiny", "too_large", {}, "RESOURCE_EXHAUSTED", "larger than max"),
    ],
)
def test_errors_map_to_grpc_codes(
    client: tg.InferenceServerClient,
    model: str,
    inputs: str | None,
    params: dict[str, str],
    code: str,
    says: str,
) -> None:
    x = {
        None: images([False]),
        "wrong_size": np.zeros((1, 1, 20, 20), np.float32),
        "too_many": np.zeros((41, 1, 28, 28), np.float32),
        "too_large": np.zeros((100, 1, 28, 28), np.float32),  # 313 KB > 256 KiB
    }[inputs]
    error = refused(lambda: client.infer(model, [fp32(x)], headers=AUTH, parameters=params))
    assert error.status() == f"StatusCode.{code}"
    assert says in error.message()


def test_typed_contents_and_request_id(server: RunningServer) -> None:
    """A client that sends typed contents (not raw) gets typed outputs; the caller's request
    id comes back in the trailing metadata, and a refusal says its type there."""
    x = images([True])
    msg = pb.ModelInferRequest(model_name="tiny", id="typed-1")
    tensor = msg.inputs.add(name="images", datatype="FP32", shape=list(x.shape))
    tensor.contents.fp32_contents.extend(x.reshape(-1).tolist())
    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        metadata = (*AUTH.items(), ("x-request-id", "trace-abc"))
        answer, call = stub.ModelInfer.with_call(msg, metadata=metadata)
        assert dict(call.trailing_metadata())["x-request-id"] == "trace-abc"
        assert not answer.raw_output_contents
        assert len(answer.outputs[0].contents.fp32_contents) == 10
        assert answer.parameters["guard_flagged"].string_param == "[true]"
        msg.parameters["guard_mode"].string_param = "block"
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(msg, metadata=metadata)
        assert info.value.code() is grpc.StatusCode.PERMISSION_DENIED
        assert dict(info.value.trailing_metadata())["guard-error-type"] == "blocked"


def test_rpcs_are_counted_with_the_http_requests(
    client: tg.InferenceServerClient, server: RunningServer
) -> None:
    def counts() -> tuple[float, float]:
        samples = scrape(server.url)
        name, labels = "guard_http_requests_total", {"route": INFER, "method": "POST"}
        return (
            value(samples, name, **labels, status_class="2xx"),
            value(samples, name, **labels, status_class="4xx"),
        )

    ok_before, refused_before = counts()
    x = fp32(images([True]))
    client.infer("tiny", [x], headers=AUTH)
    refused(lambda: client.infer("tiny", [x], headers=AUTH, parameters={"guard_mode": "block"}))
    ok_after, refused_after = counts()
    assert (ok_after - ok_before, refused_after - refused_before) == (1.0, 1.0)
