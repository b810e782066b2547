"""Local mode: the guard is itself a V2 server, driven by the real tritonclient[http]."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from tests.support.promtext import scrape, value
from tests.support.server import RunningServer, serve
from tests.support.tiny_models import TinySpec, add_trigger, clean_image, png_bytes

pytestmark = pytest.mark.slow
SPEC = TinySpec()
Client = Callable[[str], triton.InferenceServerClient]


LIMITS = {"GUARD_MAX_BODY_BYTES": str(256 * 1024), "GUARD_MAX_REQUEST_PIXELS": "100000"}


@pytest.fixture(scope="module")
def server(tiny_set: Path, rgb_set: Path) -> Iterator[RunningServer]:
    with serve([tiny_set, rgb_set], {"GUARD_INTRA_OP_THREADS": "1", **LIMITS}) as running:
        yield running


def batch(classes: list[int], triggered: list[bool]) -> np.ndarray:
    """(N, 28, 28) uint8 images."""
    return np.stack(
        [
            add_trigger(clean_image(SPEC, k, seed=i)) if t else clean_image(SPEC, k, seed=i)
            for i, (k, t) in enumerate(zip(classes, triggered, strict=True))
        ]
    )


def target_logits(model_dir: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(model_dir / "target.onnx"))
    return np.asarray(session.run(None, {"images": x})[0])


def fp32_input(x: np.ndarray, binary: bool) -> triton.InferInput:
    inp = triton.InferInput("images", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    return inp


def test_health_and_metadata(server: RunningServer, triton_client: Client) -> None:
    client = triton_client(server.url)
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("tiny") and client.is_model_ready("tiny", "1")
    assert not client.is_model_ready("tiny", "7") and not client.is_model_ready("nope")
    meta = client.get_server_metadata()
    assert meta["name"] == "detrigger-guard" and "binary_tensor_data" in meta["extensions"]
    model = client.get_model_metadata("tinyrgb")
    assert model["inputs"] == [{"name": "images", "datatype": "FP32", "shape": [-1, 3, 32, 32]}]
    assert model["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]}]
    assert model["versions"] == ["1"]


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_fp32_nchw_gives_the_targets_logits_and_the_verdict(
    server: RunningServer, triton_client: Client, tiny_set: Path, binary: bool
) -> None:
    images = batch([3, 5, 7, 2], [False, True, False, True])
    x = images[:, None].astype(np.float32) / 255.0
    result = triton_client(server.url).infer(
        "tiny",
        [fp32_input(x, binary)],
        outputs=[triton.InferRequestedOutput("logits", binary_data=binary)],
        request_id="req-1",
    )
    logits = result.as_numpy("logits")
    np.testing.assert_allclose(logits, target_logits(tiny_set, x), rtol=0, atol=1e-5)
    response = result.get_response()
    assert response["model_name"] == "tiny" and response["id"] == "req-1"
    params = response["parameters"]
    assert json.loads(params["guard_flagged"]) == [False, True, False, True]
    assert params["guard_flagged_count"] == 2 and params["guard_mode"] == "flag"
    assert json.loads(params["guard_predicted_class"]) == [3, 0, 7, 0]
    assert json.loads(params["guard_detriggered_class"]) == [3, 5, 7, 2]
    assert len(json.loads(params["guard_scores"])) == 4
    # Binary outputs come back as binary tensor data (binary_data_size), JSON ones as data.
    (out,) = response["outputs"]
    assert ("binary_data_size" in out.get("parameters", {})) is binary


def test_uint8_nhwc_and_encoded_images_are_accepted(
    server: RunningServer, triton_client: Client
) -> None:
    client = triton_client(server.url)
    images = batch([4, 6], [True, False])
    nhwc = images[:, :, :, None]  # (N, H, W, 1) uint8
    inp = triton.InferInput("images", list(nhwc.shape), "UINT8")
    inp.set_data_from_numpy(nhwc, binary_data=True)
    result = client.infer("tiny", [inp], parameters={"layout": "NHWC"})
    uint8_logits = result.as_numpy("logits")
    assert json.loads(result.get_response()["parameters"]["guard_flagged"]) == [True, False]

    files = np.array([png_bytes(im) for im in images], dtype=np.object_)
    inp = triton.InferInput("images", [2], "BYTES")
    inp.set_data_from_numpy(files, binary_data=True)
    result = client.infer("tiny", [inp])
    np.testing.assert_allclose(result.as_numpy("logits"), uint8_logits, atol=1e-6)
    assert json.loads(result.get_response()["parameters"]["guard_flagged"]) == [True, False]


def test_repair_swaps_in_the_detriggered_rows_and_block_refuses(
    server: RunningServer, triton_client: Client, tiny_set: Path
) -> None:
    client = triton_client(server.url)
    images = batch([5, 5], [False, True])
    x = images[:, None].astype(np.float32) / 255.0
    repaired = client.infer("tiny", [fp32_input(x, True)], parameters={"guard_mode": "repair"})
    logits = repaired.as_numpy("logits")
    assert logits.argmax(axis=1).tolist() == [5, 5]
    clean_ae = target_logits(tiny_set, x * mask(x.shape))
    np.testing.assert_allclose(logits[1], clean_ae[1], atol=1e-5)
    assert json.loads(repaired.get_response()["parameters"]["guard_repaired"]) == [False, True]

    with pytest.raises(InferenceServerException) as refused:
        client.infer("tiny", [fp32_input(x, True)], parameters={"guard_mode": "block"})
    assert refused.value.status() == "403" and "[1]" in refused.value.message()
    # A batch without a flagged image passes in block mode.
    ok = client.infer("tiny", [fp32_input(x[:1], True)], parameters={"guard_mode": "block"})
    assert ok.as_numpy("logits").argmax(axis=1).tolist() == [5]


def mask(shape: tuple[int, ...]) -> np.ndarray:
    m = np.ones(shape, dtype=np.float32)
    m[:, :, :4, :4] = 0
    return m


def test_errors_use_the_v2_shape(server: RunningServer, triton_client: Client) -> None:
    client = triton_client(server.url)
    wrong = np.zeros((1, 1, 32, 32), dtype=np.float32)
    with pytest.raises(InferenceServerException) as err:
        client.infer("tiny", [fp32_input(wrong, True)])
    assert err.value.status() == "422" and "[N, 1, 28, 28]" in err.value.message()
    with pytest.raises(InferenceServerException) as err:
        client.infer("nope", [fp32_input(wrong, True)])
    assert err.value.status() == "404"

    url = server.url + "/v2/models/tiny/infer"
    r = httpx.post(url, content=b"{not json")
    assert r.status_code == 400
    body = r.json()
    assert isinstance(body["error"], str) and body["type"] == "invalid_request"
    out_of_range = {"inputs": [{"name": "images", "shape": [1, 1, 28, 28], "datatype": "FP32",
                                "data": [2.0] * 784}]}  # fmt: skip
    r = httpx.post(url, json=out_of_range)
    assert r.status_code == 422 and "[0, 1]" in r.json()["error"]
    # The binary header must fit the body.
    r = httpx.post(url, content=b"{}", headers={"Inference-Header-Content-Length": "99"})
    assert r.status_code == 400 and "Inference-Header-Content-Length" in r.json()["error"]
    # /classify keeps its own error shape.
    r = httpx.post(server.url + "/classify", content=b"x", headers={"content-type": "text/plain"})
    assert r.json()["error"]["type"] == "unsupported_media_type"


def test_issue_19_reproducers_are_4xx_in_the_v2_shape(server: RunningServer) -> None:
    """Each of these was a 500 (or, for the 413, the /classify error shape)."""
    uint8 = {"name": "images", "datatype": "UINT8", "shape": [1, 1, 28, 28], "data": [300]}
    for model in ("tiny", "nope"):  # the parser runs before the model lookup
        r = httpx.post(f"{server.url}/v2/models/{model}/infer", json={"inputs": [uint8]})
        assert r.status_code == 400 and "outside the UINT8 range" in r.json()["error"], r.text
    url = server.url + "/v2/models/tiny/infer"
    r = httpx.post(url, content=b"[" * 100_000 + b"]" * 100_000)
    assert r.status_code == 400 and "nested too deeply" in r.json()["error"]
    r = httpx.post(url, json={"inputs": [{**uint8, "datatype": []}]})
    assert r.status_code == 400 and r.json()["type"] == "invalid_request"
    empty = {"name": "images", "datatype": "FP32", "shape": [0, 1, 28, 28], "data": []}
    r = httpx.post(url, json={"inputs": [empty]})
    assert r.status_code == 400 and "holds no images" in r.json()["error"]
    assert "FP32 in [0, 1]" in r.json()["accepted"]  # the V2 input, not /classify's upload
    r = httpx.post(url, content=b"{}", headers={"content-encoding": "gzip"})
    assert r.status_code == 400 and "compressed" in r.json()["error"]
    r = httpx.post(url, content=b"{" + b" " * (300 * 1024) + b"}")  # over GUARD_MAX_BODY_BYTES
    assert r.status_code == 413
    body = r.json()
    assert isinstance(body["error"], str) and body["type"] == "payload_too_large", body


def test_guard_resize_false_as_text_does_not_resize(server: RunningServer) -> None:
    """Issue 19 #8: bool("false") is True, so the text "false" turned resizing on."""
    big = png_bytes(clean_image(TinySpec(height=32, width=32), 2))
    encoded = base64.b64encode(big).decode()
    tensor = {"name": "images", "datatype": "BYTES", "shape": [1], "data": [encoded]}
    url = server.url + "/v2/models/tiny/infer"
    answers = {
        flag: httpx.post(url, json={"inputs": [tensor], "parameters": {"guard_resize": flag}})
        for flag in ("false", False, "true", "maybe")
    }
    assert answers["false"].status_code == 422, answers["false"].text
    assert answers["false"].json()["type"] == "wrong_image_size"
    assert answers[False].status_code == 422
    assert answers["true"].status_code == 200
    assert answers["maybe"].status_code == 422
    assert answers["maybe"].json()["type"] == "invalid_parameter"


def test_bytes_inputs_share_the_pixel_budget(server: RunningServer) -> None:
    """Issue 19 #9: encoded images over V2 count against GUARD_MAX_REQUEST_PIXELS (100,000
    here) on their headers, before decoding, as /classify's uploads do."""
    big = base64.b64encode(png_bytes(np.zeros((200, 200), dtype=np.uint8))).decode()
    tensor = {"name": "images", "datatype": "BYTES", "shape": [3], "data": [big] * 3}
    body = {"inputs": [tensor], "parameters": {"guard_resize": True}}
    r = httpx.post(server.url + "/v2/models/tiny/infer", json=body)
    assert r.status_code == 413 and r.json()["type"] == "too_many_pixels", r.text
    tensor = {**tensor, "shape": [2], "data": [big] * 2}
    r = httpx.post(server.url + "/v2/models/tiny/infer", json={**body, "inputs": [tensor]})
    assert r.status_code == 200, r.text


def test_v2_requests_are_counted(server: RunningServer, triton_client: Client) -> None:
    before = scrape(server.url)
    x = batch([2, 3, 4], [True, True, False])[:, None].astype(np.float32) / 255.0
    triton_client(server.url).infer("tiny", [fp32_input(x, True)])
    after = scrape(server.url)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    tiny = {"model": "tiny", "detector": "detrigger"}
    assert delta("guard_images_total", predicted_class="0", **tiny) == 2
    assert delta("guard_images_total", predicted_class="4", **tiny) == 1
    assert delta("guard_images_flagged_total", predicted_class="0", **tiny) == 2
    route = {"route": "/v2/models/{model_name}/infer", "method": "POST", "status_class": "2xx"}
    assert delta("guard_http_requests_total", **route) == 1
