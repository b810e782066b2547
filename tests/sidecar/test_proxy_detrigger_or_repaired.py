"""Detector detrigger_or_repaired in proxy mode: the front guard runs the AE and the repaired
graph (batched), the upstream V2 server (a second guard in local mode) runs the target on
[x; the images AE(x) changed], and the verdict and the repaired answer are the ones the
upstream gives when it runs the detector itself. Then an upstream output that has no rows on
the repaired graph."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as triton

from service.backends.proxy import answer_rows
from service.protocol.infer_type import InferTensor
from tests.support.promtext import scrape, value
from tests.support.server import RunningServer, binary_proxy_env, post_classify, serve
from tests.support.tiny_models import labelled_pngs, v2_batch

pytestmark = pytest.mark.slow
Client = Callable[[str], triton.InferenceServerClient]
NAME = "tinyeither"
VERDICT = (
    "guard_flagged",
    "guard_scores",
    "guard_repaired_scores",
    "guard_fired",
    "guard_predicted_class",
    "guard_detriggered_class",
    "guard_threshold",
    "guard_repaired_threshold",
    "guard_repaired",
)


@pytest.fixture(scope="module")
def upstream(either_set: Path) -> Iterator[RunningServer]:
    with serve([either_set], {"GUARD_INTRA_OP_THREADS": "1"}) as server:
        yield server


@pytest.fixture(scope="module")
def front(upstream: RunningServer, either_set: Path) -> Iterator[RunningServer]:
    with serve([either_set], binary_proxy_env(upstream, NAME)) as server:
        yield server


def images() -> triton.InferInput:
    x = v2_batch()
    inp = triton.InferInput("images", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=True)
    return inp


@pytest.mark.parametrize("mode", ["flag", "repair"])
def test_proxy_matches_local_and_sends_x_and_ae_x_once(
    front: RunningServer, upstream: RunningServer, triton_client: Client, mode: str
) -> None:
    params = {"guard_detector": "detrigger_or_repaired", "guard_mode": mode}
    before = scrape(upstream.url)
    proxied = triton_client(front.url).infer(NAME, [images()], parameters=params)
    after = scrape(upstream.url)
    local = triton_client(upstream.url).infer(NAME, [images()], parameters=params)

    got = proxied.get_response()["parameters"]
    want = local.get_response()["parameters"]
    assert got["guard_detector"] == "detrigger_or_repaired" and got["guard_mode"] == mode
    assert json.loads(got["guard_fired"]) == [[], [], ["detrigger", "repaired"]]
    for key in VERDICT:
        assert got[key] == want[key], key
    np.testing.assert_allclose(proxied.as_numpy("logits"), local.as_numpy("logits"), atol=1e-6)
    assert proxied.as_numpy("logits").argmax(1).tolist() == (
        [2, 5, 5] if mode == "repair" else [2, 5, 0]
    )
    # [x; AE(x)] once: the tiny AE changes every image (its patch holds faint noise in the
    # clean ones), so the upstream ran 3 + 3 images; the repaired graph ran here.
    labels = {"model": NAME, "detector": "detrigger"}
    sent = value(after, "guard_batch_size_sum", **labels) - value(
        before, "guard_batch_size_sum", **labels
    )
    assert sent == 6


def test_classify_in_proxy_mode(front: RunningServer) -> None:
    items, labels = labelled_pngs(range(3, 5))
    r = post_classify(front, items, detector="detrigger_or_repaired", mode="repair")
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [res["flagged"] for res in results] == [False, False, True, True]
    assert [res["answer"]["class"] for res in results] == labels
    assert [res["fired"] for res in results][2:] == [["detrigger", "repaired"]] * 2


def test_only_the_logits_output_gets_the_answer_rows() -> None:
    """An upstream answering logits and probabilities for [x; AE(x)]: the logits get the fused
    answer as rows N..2N-1; the probabilities keep their N rows on x (mode repair then refuses
    them, as with detector repaired); an output of another length is left alone."""
    logits = InferTensor.from_numpy("logits", np.arange(8, dtype=np.float32).reshape(4, 2))
    probs = InferTensor.from_numpy("probs", np.ones((4, 2), np.float32))
    other = InferTensor.from_numpy("names", np.ones((3,), np.float32))
    answer = np.full((2, 2), -1.0, np.float64)
    got = answer_rows(logits, "logits", answer)
    assert got.shape == [4, 2] and got.data.dtype == np.float32
    assert got.data.tolist() == [[0, 1], [2, 3], [-1, -1], [-1, -1]]
    assert answer_rows(probs, "logits", answer).shape == [2, 2]
    assert answer_rows(other, "logits", answer) is other
