"""Detector repaired in proxy mode: the front guard runs the repaired graph (batched), the
upstream V2 server (a second guard in local mode) runs the target on x alone, and the verdict
and the repaired answer are the ones the upstream gives when it runs detector repaired itself.
Then the one answer proxy mode cannot give: repaired rows for an upstream output that the
repaired graph does not compute."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton

from contract.errors import InvalidParameter
from contract.modes import Detector, Mode
from service.api.v2_dataplane import response_of
from service.backends.base import Detection
from service.protocol.infer_type import InferRequest, InferTensor, RequestedOutput
from service.runtime.modelset import ModelSet
from service.settings import Settings
from tests.support.promtext import scrape, value
from tests.support.server import RunningServer, binary_proxy_env, serve
from tests.support.tiny_models import TinySpec, add_trigger, clean_image, png_bytes

pytestmark = pytest.mark.slow
Client = Callable[[str], triton.InferenceServerClient]
SPEC = TinySpec()


@pytest.fixture(scope="module")
def upstream(repaired_set: Path) -> Iterator[RunningServer]:
    with serve([repaired_set], {"GUARD_INTRA_OP_THREADS": "1"}) as server:
        yield server


@pytest.fixture(scope="module")
def front(upstream: RunningServer, repaired_set: Path) -> Iterator[RunningServer]:
    with serve([repaired_set], binary_proxy_env(upstream, "tinyrepaired")) as server:
        yield server


def images() -> triton.InferInput:
    clean = [clean_image(SPEC, k, seed=k) for k in (2, 7)]
    x = np.stack(clean + [add_trigger(clean[0])])[:, None].astype(np.float32) / 255.0
    inp = triton.InferInput("images", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=True)
    return inp


@pytest.mark.parametrize("mode", ["flag", "repair"])
def test_proxy_repaired_matches_local_repaired_and_sends_x_alone(
    front: RunningServer, upstream: RunningServer, triton_client: Client, mode: str
) -> None:
    params = {"guard_detector": "repaired", "guard_mode": mode}
    before = scrape(upstream.url)
    proxied = triton_client(front.url).infer("tinyrepaired", [images()], parameters=params)
    after = scrape(upstream.url)
    local = triton_client(upstream.url).infer("tinyrepaired", [images()], parameters=params)

    got = proxied.get_response()["parameters"]
    want = local.get_response()["parameters"]
    assert got["guard_detector"] == "repaired" and got["guard_mode"] == mode
    assert json.loads(got["guard_flagged"]) == [False, False, True]
    for key in (
        "guard_flagged",
        "guard_scores",
        "guard_predicted_class",
        "guard_detriggered_class",
        "guard_threshold",
        "guard_repaired",
    ):
        assert got[key] == want[key], key
    # Under repair the flagged row is the repaired graph's logits, computed here.
    np.testing.assert_allclose(proxied.as_numpy("logits"), local.as_numpy("logits"), atol=1e-6)
    assert proxied.as_numpy("logits").argmax(1).tolist() == (
        [2, 7, 2] if mode == "repair" else [2, 7, 0]
    )
    # The upstream ran its target once per image: 3 images, no second pass.
    labels = {"model": "tinyrepaired", "detector": "detrigger"}
    sent = value(after, "guard_batch_size_sum", **labels) - value(
        before, "guard_batch_size_sum", **labels
    )
    assert sent == 3


def test_classify_with_repaired_in_proxy_mode(front: RunningServer) -> None:
    image = clean_image(SPEC, 4, seed=1)
    files = [
        ("images", ("c.png", png_bytes(image), "image/png")),
        ("images", ("t.png", png_bytes(add_trigger(image)), "image/png")),
    ]
    params = {"detector": "repaired", "mode": "repair"}
    r = httpx.post(front.url + "/classify", files=files, params=params, timeout=30)
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [res["flagged"] for res in results] == [False, True]
    assert [res["predicted"]["class"] for res in results] == [4, 0]
    assert [res["answer"]["class"] for res in results] == [4, 4]
    assert [res["outcome"] for res in results] == ["answered", "repaired"]


def test_repair_refuses_an_upstream_output_without_repaired_rows(repaired_set: Path) -> None:
    """An upstream that answers logits and a second output (say probabilities): the repaired
    graph gives the logits' repaired rows only, so mode repair names the output it cannot
    repair (422) and accepts a request that asks for the logits alone."""
    model_set = ModelSet.load(repaired_set, Settings(models=[repaired_set]))
    clean = clean_image(SPEC, 3, seed=0)
    x = np.stack([clean, add_trigger(clean)])[:, None].astype(np.float32) / 255.0
    scored = model_set.repaired_scored(x)
    logits = np.concatenate([scored.logits_x, scored.logits_ae]).astype(np.float32)
    probs = np.exp(scored.logits_x) / np.exp(scored.logits_x).sum(1, keepdims=True)
    detection = Detection(
        scored.decisions,
        [InferTensor.from_numpy("logits", logits), InferTensor.from_numpy("probs", probs)],
        "upstream",
        None,
        {},
        Detector.repaired,
    )
    request = InferRequest([InferTensor.from_numpy("images", x)])
    with pytest.raises(InvalidParameter) as refused:
        response_of("tinyrepaired", request, model_set, Mode.repair, detection)
    assert "no repaired rows for outputs ['probs']" in refused.value.message
    assert refused.value.accepted == "outputs ['logits'] in the request, or mode flag or block"

    logits_only = InferRequest(request.inputs, outputs=[RequestedOutput("logits")])
    answer = response_of("tinyrepaired", logits_only, model_set, Mode.repair, detection)
    assert [t.name for t in answer.outputs] == ["logits"]
    assert answer.outputs[0].data.argmax(1).tolist() == [3, 3]  # the flagged row repaired
