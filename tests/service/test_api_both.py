"""Detector both (the de-trigger AE and STRIP on one batch, fused by an OR) against a real
uvicorn on 127.0.0.1: /classify (query and JSON), the V2 REST and gRPC routes, /v1/models,
metrics, and the 4xx answers of a set that cannot run it."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import tritonclient.grpc as tg
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from tests.support.promtext import scrape, value
from tests.support.server import RunningServer, post_classify, serve
from tests.support.tiny_models import (
    TinySpec,
    labelled_pngs,
    v2_batch,
)

pytestmark = pytest.mark.slow
SPEC = TinySpec()


@pytest.fixture(scope="module")
def server(tiny_set: Path, strip_set: Path, both_set: Path) -> Iterator[RunningServer]:
    """tiny (no STRIP), tinystrip (STRIP, no both: an older manifest) and tinyboth (both:
    prob_drop > 0.5 or entropy < 0.3 bits)."""
    env = {"GUARD_INTRA_OP_THREADS": "1", "GUARD_MAX_BATCH_SIZE": "16"}
    with serve([tiny_set, strip_set, both_set], env) as running:
        yield running


def test_both_reports_each_score_and_which_fired(server: RunningServer) -> None:
    items, labels = labelled_pngs(range(1, 5))
    r = post_classify(server, items, model="tinyboth", detector="both", mode="block")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["detector"] == "both" and body["flagged"] == 4 and body["blocked"] == 4
    # The same images through each detector alone: both's scores are theirs, its flag their OR.
    alone = {
        d: post_classify(server, items, model="tinyboth", detector=d).json()["results"]
        for d in ("detrigger", "strip")
    }
    for i, res in enumerate(body["results"]):
        triggered = i >= 4
        assert res["detector"] == "both" and res["decision_rule"] == "either"
        assert res["score_name"] == "prob_drop"
        assert res["threshold"] == 0.5 and res["strip_threshold"] == 0.3
        assert res["score"] == pytest.approx(alone["detrigger"][i]["score"], abs=1e-9)
        assert res["strip_entropy"] == pytest.approx(alone["strip"][i]["score"], abs=1e-9)
        assert res["detriggered"]["class"] == labels[i]
        assert res["fired"] == (["detrigger", "strip"] if triggered else [])
        assert res["flagged"] is triggered
        assert res["outcome"] == ("blocked" if triggered else "answered")
    # The other detectors say what fired too: themselves, when they flag.
    assert [res["fired"] for res in alone["strip"]] == [[]] * 4 + [["strip"]] * 4
    assert alone["strip"][0]["strip_entropy"] is None


def test_json_body_chooses_both(server: RunningServer) -> None:
    items, _ = labelled_pngs(range(1, 5))
    payload = {
        "model": "tinyboth",
        "detector": "both",
        "images": [{"data": base64.b64encode(d).decode()} for d in (items[0], items[4])],
    }
    r = httpx.post(server.url + "/classify", json=payload, timeout=30)
    assert r.status_code == 200 and r.json()["detector"] == "both", r.text
    assert [res["flagged"] for res in r.json()["results"]] == [False, True]


@pytest.mark.parametrize(
    "params, kind, words",
    [
        ({"model": "tiny", "detector": "both"}, "detector_not_available", "no detectors.both"),
        ({"model": "tinystrip", "detector": "both"}, "detector_not_available", "'both'"),
        (
            {"model": "tinyboth", "detector": "both", "mode": "repair"},
            "invalid_parameter",
            "mode repair needs detector detrigger",
        ),
    ],
)
def test_both_where_it_cannot_run_is_a_422_that_says_why(
    server: RunningServer, params: dict[str, str], kind: str, words: str
) -> None:
    items, _ = labelled_pngs(range(1, 5))
    r = post_classify(server, items[:1], **params)
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["type"] == kind and words in error["message"], error
    if params["model"] == "tinystrip" and kind == "detector_not_available":
        want = "detector one of ['detrigger', 'strip'] for model set 'tinystrip'"
        assert error["accepted"] == want


def test_models_list_both_and_its_thresholds(server: RunningServer) -> None:
    models = {m["name"]: m for m in httpx.get(server.url + "/v1/models").json()["models"]}
    assert models["tinystrip"]["detectors"] == ["detrigger", "strip"]
    assert models["tinystrip"]["both"] is None
    assert models["tinyboth"]["detectors"] == ["detrigger", "strip", "both"]
    assert models["tinyboth"]["both"] == {
        "rule": "either",
        "score": "prob_drop",
        "ae_threshold": 0.5,
        "strip_threshold": 0.3,
        "target_fpr": 0.01,
    }


def test_metrics_are_labelled_both(server: RunningServer) -> None:
    before = scrape(server.url)
    items, _ = labelled_pngs(range(1, 5))
    assert post_classify(server, items, model="tinyboth", detector="both").status_code == 200
    after = scrape(server.url)
    labels = {"model": "tinyboth", "detector": "both"}

    def delta(name: str, **extra: str) -> float:
        return value(after, name, **labels, **extra) - value(before, name, **labels, **extra)

    assert sum(delta("guard_images_total", predicted_class=str(c)) for c in range(10)) == 8
    assert delta("guard_images_flagged_total", predicted_class="0") == 4
    assert delta("guard_batch_size_sum") == 8
    both = {"model": "tinyboth", "detector": "both", "rule": "either"}
    assert value(after, "guard_threshold", score="prob_drop", **both) == 0.5
    assert value(after, "guard_threshold", score="strip_entropy", **both) == 0.3


def check_verdict(params: dict) -> None:
    assert params["guard_detector"] == "both" and params["guard_score_name"] == "prob_drop"
    assert json.loads(params["guard_flagged"]) == [False, False, True]
    assert json.loads(params["guard_fired"]) == [[], [], ["detrigger", "strip"]]
    assert json.loads(params["guard_detriggered_class"]) == [2, 5, 5]
    assert float(params["guard_strip_threshold"]) == 0.3
    entropies = json.loads(params["guard_strip_scores"])
    assert len(entropies) == 3 and entropies[2] < 0.3 < min(entropies[:2])


def test_v2_rest_chooses_both_with_a_request_parameter(server: RunningServer) -> None:
    x = v2_batch()
    inp = triton.InferInput("images", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=True)
    client = triton.InferenceServerClient(server.url.removeprefix("http://"))
    try:
        result = client.infer("tinyboth", [inp], parameters={"guard_detector": "both"})
        check_verdict(result.get_response()["parameters"])
        assert result.as_numpy("logits").shape == (3, 10)  # the target's rows on x only
        with pytest.raises(InferenceServerException) as refused:
            client.infer(
                "tinyboth", [inp], parameters={"guard_detector": "both", "guard_mode": "block"}
            )
        assert refused.value.status() == "403" and "fired" in refused.value.message()
        with pytest.raises(InferenceServerException) as err:
            client.infer("tinystrip", [inp], parameters={"guard_detector": "both"})
        assert err.value.status() == "422" and "does not offer detector" in err.value.message()
        meta = client.get_model_metadata("tinyboth")
        assert json.loads(meta["parameters"]["guard_detectors"]) == ["detrigger", "strip", "both"]
    finally:
        client.close()


def test_v2_grpc_chooses_both_with_a_request_parameter(server: RunningServer) -> None:
    x = v2_batch()
    inp = tg.InferInput("images", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    client = tg.InferenceServerClient(server.grpc_target)
    try:
        result = client.infer("tinyboth", [inp], parameters={"guard_detector": "both"})
        response = result.get_response(as_json=True)
        check_verdict({k: next(iter(v.values())) for k, v in response["parameters"].items()})
        with pytest.raises(InferenceServerException) as err:
            client.infer("tinyboth", [inp], parameters={"guard_detector": "both",
                                                        "guard_mode": "repair"})  # fmt: skip
        assert "mode repair needs detector detrigger" in err.value.message()
    finally:
        client.close()
