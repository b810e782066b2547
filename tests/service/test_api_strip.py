"""STRIP as the second detector, chosen per request, against a real uvicorn on 127.0.0.1:
/classify (query and JSON), the KServe V2 route, /v1/models, metrics, and the 4xx answers."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from tests.support.promtext import scrape, series, value
from tests.support.server import RunningServer, post_classify, serve
from tests.support.tiny_models import (
    TinySpec,
    add_trigger,
    clean_image,
    labelled_pngs,
    png_bytes,
)

pytestmark = pytest.mark.slow
SPEC = TinySpec()
Client = Callable[[str], triton.InferenceServerClient]


@pytest.fixture(scope="module")
def server(tiny_set: Path, strip_set: Path) -> Iterator[RunningServer]:
    """tiny (no STRIP bank, the default set) and tinystrip (STRIP: n = 8, threshold 0.3)."""
    env = {"GUARD_INTRA_OP_THREADS": "1", "GUARD_MAX_BATCH_SIZE": "16"}
    with serve([tiny_set, strip_set], env) as running:
        yield running


@pytest.fixture
def triton_client() -> Iterator[Client]:
    made: list[triton.InferenceServerClient] = []

    def make(url: str) -> triton.InferenceServerClient:
        made.append(triton.InferenceServerClient(url.removeprefix("http://")))
        return made[-1]

    yield make
    for client in made:
        client.close()


def test_strip_flags_triggered_images_and_says_it_decided(server: RunningServer) -> None:
    items, labels = labelled_pngs(range(1, 7))
    r = post_classify(server, items, model="tinystrip", detector="strip", mode="block")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "tinystrip" and body["detector"] == "strip"
    assert body["flagged"] == 6 and body["blocked"] == 6
    for i, res in enumerate(body["results"]):
        triggered = i >= 6
        assert res["detector"] == "strip" and res["detriggered"] is None
        assert res["score_name"] == "strip_entropy" and res["decision_rule"] == "score_below"
        assert res["threshold"] == 0.3
        assert res["flagged"] is triggered
        assert (res["score"] < 0.3) is triggered  # flagged when the entropy is LOW
        assert res["predicted"]["class"] == (0 if triggered else labels[i])
        assert res["outcome"] == ("blocked" if triggered else "answered")


def test_detrigger_on_the_same_set_answers_as_before(server: RunningServer) -> None:
    items, labels = labelled_pngs(range(1, 7))
    r = post_classify(server, items, model="tinystrip", detector="detrigger", mode="repair")
    body = r.json()
    assert r.status_code == 200 and body["detector"] == "detrigger"
    assert [res["flagged"] for res in body["results"]] == [False] * 6 + [True] * 6
    assert [res["detriggered"]["class"] for res in body["results"]] == labels
    assert {res["score_name"] for res in body["results"]} == {"prob_drop"}
    # No detector named: GUARD_DEFAULT_DETECTOR (detrigger).
    assert post_classify(server, items[:1], model="tinystrip").json()["detector"] == "detrigger"


def test_a_repeated_image_gets_the_same_strip_score(server: RunningServer) -> None:
    items, _ = labelled_pngs(range(1, 7))
    alone = post_classify(server, [items[2]], model="tinystrip", detector="strip").json()
    mixed = post_classify(server, items[::-1], model="tinystrip", detector="strip").json()
    want = alone["results"][0]["score"]
    assert mixed["results"][len(items) - 1 - 2]["score"] == pytest.approx(want, abs=1e-12)


def test_json_body_chooses_the_detector(server: RunningServer) -> None:
    items, _ = labelled_pngs(range(1, 7))
    payload = {
        "model": "tinystrip",
        "detector": "strip",
        "images": [{"data": base64.b64encode(d).decode()} for d in (items[0], items[6])],
    }
    r = httpx.post(server.url + "/classify", json=payload, params={"detector": "detrigger"})
    body = r.json()
    assert r.status_code == 200 and body["detector"] == "strip"  # the body wins, as for mode
    assert [res["flagged"] for res in body["results"]] == [False, True]


@pytest.mark.parametrize(
    "params, kind, words",
    [
        ({"detector": "strip"}, "detector_not_available", "does not offer detector 'strip'"),
        ({"detector": "neural-cleanse"}, "invalid_parameter", "detector"),
        (
            {"model": "tinystrip", "detector": "strip", "mode": "repair"},
            "invalid_parameter",
            "mode repair needs detector detrigger",
        ),
    ],
)
def test_a_detector_that_cannot_run_is_a_422_that_says_why(
    server: RunningServer, params: dict[str, str], kind: str, words: str
) -> None:
    items, _ = labelled_pngs(range(1, 7))
    r = post_classify(server, items[:1], **params)
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["type"] == kind and words in error["message"]
    if kind == "detector_not_available":
        assert error["accepted"] == "detector one of ['detrigger'] for model set 'tiny'"


def test_models_list_each_sets_detectors(server: RunningServer) -> None:
    models = {m["name"]: m for m in httpx.get(server.url + "/v1/models").json()["models"]}
    assert models["tiny"]["detectors"] == ["detrigger"] and models["tiny"]["strip"] is None
    assert models["tinystrip"]["detectors"] == ["detrigger", "strip"]
    strip = models["tinystrip"]["strip"]
    assert strip == {"n": 8, "bank_images": 27, "threshold": 0.3, "target_fpr": 0.01}


def test_metrics_count_images_and_flags_per_detector(server: RunningServer) -> None:
    before = scrape(server.url)
    items, _ = labelled_pngs(range(1, 7))
    assert post_classify(server, items, model="tinystrip", detector="strip").status_code == 200
    after = scrape(server.url)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    strip = {"model": "tinystrip", "detector": "strip"}
    assert (
        sum(delta("guard_images_total", predicted_class=str(c), **strip) for c in range(10)) == 12
    )
    assert delta("guard_images_flagged_total", predicted_class="0", **strip) == 6
    assert delta("guard_batch_size_sum", **strip) == 12
    detrigger = {"model": "tinystrip", "detector": "detrigger"}
    assert delta("guard_images_flagged_total", predicted_class="0", **detrigger) == 0
    # Bounded: one series per class and detector the set offers; none for tiny's missing STRIP.
    labels = [dict(k) for k in series(after, "guard_images_total")]
    assert sum(x["model"] == "tinystrip" for x in labels) == 20
    assert {x["detector"] for x in labels if x["model"] == "tiny"} == {"detrigger"}


def test_v2_chooses_the_detector_with_a_request_parameter(
    server: RunningServer, triton_client: Client
) -> None:
    clean = [clean_image(SPEC, k, seed=k) for k in (2, 5)]
    x = np.stack(clean + [add_trigger(clean[1])])[:, None].astype(np.float32) / 255.0
    inp = triton.InferInput("images", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=True)
    client = triton_client(server.url)
    result = client.infer("tinystrip", [inp], parameters={"guard_detector": "strip"})
    params = result.get_response()["parameters"]
    assert params["guard_detector"] == "strip" and params["guard_score_name"] == "strip_entropy"
    assert json.loads(params["guard_flagged"]) == [False, False, True]
    assert json.loads(params["guard_predicted_class"]) == [2, 5, 0]
    assert "guard_detriggered_class" not in params  # STRIP runs no AE
    assert result.as_numpy("logits").shape == (3, 10)  # the target's rows on x only
    scores = json.loads(params["guard_scores"])
    direct = post_classify(server, [png_bytes(clean[0])], model="tinystrip", detector="strip")
    assert scores[0] == pytest.approx(direct.json()["results"][0]["score"], abs=1e-6)
    with pytest.raises(InferenceServerException) as refused:
        client.infer(
            "tinystrip", [inp], parameters={"guard_detector": "strip", "guard_mode": "block"}
        )
    assert refused.value.status() == "403" and "STRIP entropy" in refused.value.message()
    with pytest.raises(InferenceServerException) as err:
        client.infer("tiny", [inp], parameters={"guard_detector": "strip"})
    assert err.value.status() == "422" and "does not offer detector" in err.value.message()
    meta = client.get_model_metadata("tinystrip")
    assert json.loads(meta["parameters"]["guard_detectors"]) == ["detrigger", "strip"]
