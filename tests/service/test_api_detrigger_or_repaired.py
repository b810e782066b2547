"""Detector detrigger_or_repaired (the de-trigger AE or the repaired graph, OR-fused) against a
real uvicorn on 127.0.0.1: /classify in each mode with the rule that fired, the V2 REST and gRPC
verdicts, /v1/models, metrics, GUARD_DEFAULT_DETECTOR, and the 422 of a set without it."""

from __future__ import annotations

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
from tests.support.tiny_models import TinySpec, build_model_set, labelled_pngs, v2_batch

pytestmark = pytest.mark.slow
NAME = "tinyeither"
# the same set whose repaired rule can never fire (prob_drop <= 1): only the AE's does
AE_ONLY = TinySpec(
    name="tinyeitherae", rule="score", repaired=0.5, detrigger_or_repaired=(0.5, 2.0)
)


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, repaired_set: Path, either_set: Path
) -> Iterator[RunningServer]:
    ae_only = build_model_set(tmp_path_factory.mktemp("either") / AE_ONLY.name, AE_ONLY)
    env = {
        "GUARD_INTRA_OP_THREADS": "1",
        "GUARD_MAX_BATCH_SIZE": "16",
        "GUARD_DEFAULT_DETECTOR": "detrigger_or_repaired",
    }
    with serve([either_set, ae_only, repaired_set], env) as running:
        yield running


@pytest.mark.parametrize("mode", ["flag", "block", "repair"])
def test_either_rule_flags_the_triggered_images_and_answers_per_mode(
    server: RunningServer, mode: str
) -> None:
    items, labels = labelled_pngs(range(1, 5))
    r = post_classify(server, items, model=NAME, detector="detrigger_or_repaired", mode=mode)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["detector"] == "detrigger_or_repaired" and body["flagged"] == 4
    assert body["blocked"] == (4 if mode == "block" else 0)
    for i, res in enumerate(body["results"]):
        triggered = i >= 4
        assert res["decision_rule"] == "either" and res["score_name"] == "prob_drop"
        assert res["threshold"] == 0.5 and res["repaired_threshold"] == 0.5
        assert res["strip_entropy"] is None and res["strip_threshold"] is None
        assert res["predicted"]["class"] == (0 if triggered else labels[i])
        assert res["detriggered"]["class"] == labels[i]
        # The AE removes the patch and the repaired graph ignores it: both rules fire.
        assert res["score"] > 0.9 if triggered else abs(res["score"]) < 1e-6
        assert res["repaired_score"] > 0.9 if triggered else abs(res["repaired_score"]) < 1e-6
        assert res["fired"] == (["detrigger", "repaired"] if triggered else [])
        answer = {"flag": res["predicted"], "block": None, "repair": res["detriggered"]}[mode]
        assert res["answer"] == (answer if triggered else res["predicted"])


def test_the_fired_list_names_the_one_rule_that_fired(server: RunningServer) -> None:
    items, labels = labelled_pngs(range(1, 3))
    r = post_classify(server, items, model=AE_ONLY.name, mode="repair")  # the default detector
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert r.json()["detector"] == "detrigger_or_repaired"
    assert [res["fired"] for res in results] == [[], [], ["detrigger"], ["detrigger"]]
    assert [res["answer"]["class"] for res in results] == labels
    assert all(res["repaired_threshold"] == 2.0 for res in results)


def test_the_default_detector_falls_back_where_the_set_lacks_it(server: RunningServer) -> None:
    items, _ = labelled_pngs(range(1, 2))
    r = post_classify(server, items, model="tinyrepaired")
    assert r.status_code == 200 and r.json()["detector"] == "detrigger"
    named = post_classify(server, items, model="tinyrepaired", detector="detrigger_or_repaired")
    assert named.status_code == 422, named.text
    error = named.json()["error"]
    assert error["type"] == "detector_not_available"
    assert "no detectors.detrigger_or_repaired" in error["message"]


def test_models_list_the_fused_rule(server: RunningServer) -> None:
    models = {m["name"]: m for m in httpx.get(server.url + "/v1/models").json()["models"]}
    m = models[NAME]
    assert m["detectors"] == ["detrigger", "repaired", "detrigger_or_repaired"]
    assert m["detrigger_or_repaired"] == {
        "rule": "either",
        "score": "prob_drop",
        "ae_threshold": 0.5,
        "repaired_score": "prob_drop",
        "repaired_threshold": 0.5,
        "target_fpr": 0.01,
    }
    assert models["tinyrepaired"]["detrigger_or_repaired"] is None


def test_metrics_carry_both_thresholds(server: RunningServer) -> None:
    before = scrape(server.url)
    items, _ = labelled_pngs(range(1, 5))
    assert post_classify(server, items, model=NAME).status_code == 200
    after = scrape(server.url)
    labels = {"model": NAME, "detector": "detrigger_or_repaired"}

    def delta(name: str, **extra: str) -> float:
        return value(after, name, **labels, **extra) - value(before, name, **labels, **extra)

    assert sum(delta("guard_images_total", predicted_class=str(c)) for c in range(10)) == 8
    assert delta("guard_images_flagged_total", predicted_class="0") == 4
    assert value(after, "guard_threshold", score="prob_drop", rule="either", **labels) == 0.5
    assert (
        value(after, "guard_threshold", score="repaired_prob_drop", rule="either", **labels) == 0.5
    )


def check_verdict(params: dict, mode: str = "flag") -> None:
    assert params["guard_detector"] == "detrigger_or_repaired"
    assert json.loads(params["guard_flagged"]) == [False, False, True]
    assert json.loads(params["guard_predicted_class"]) == [2, 5, 0]
    assert json.loads(params["guard_detriggered_class"]) == [2, 5, 5]
    assert json.loads(params["guard_fired"]) == [[], [], ["detrigger", "repaired"]]
    scores = json.loads(params["guard_repaired_scores"])
    assert abs(scores[0]) < 1e-6 and scores[2] > 0.9
    assert float(params["guard_repaired_threshold"]) == 0.5  # gRPC carries it as text
    assert json.loads(params["guard_repaired"]) == [False, False, mode == "repair"]
    assert "guard_strip_scores" not in params


def test_v2_rest_verdict_and_repair(server: RunningServer) -> None:
    x = v2_batch()
    inp = triton.InferInput("images", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=True)
    client = triton.InferenceServerClient(server.url.removeprefix("http://"))
    try:
        result = client.infer(NAME, [inp])  # GUARD_DEFAULT_DETECTOR
        check_verdict(result.get_response()["parameters"])
        assert result.as_numpy("logits").argmax(1).tolist() == [2, 5, 0]
        repaired = client.infer(NAME, [inp], parameters={"guard_mode": "repair"})
        check_verdict(repaired.get_response()["parameters"], "repair")
        assert repaired.as_numpy("logits").argmax(1).tolist() == [2, 5, 5]
        with pytest.raises(InferenceServerException) as refused:
            client.infer(NAME, [inp], parameters={"guard_mode": "block"})
        assert refused.value.status() == "403"
        assert "detectors that fired: [['detrigger', 'repaired']]" in refused.value.message()
    finally:
        client.close()


def test_v2_grpc_verdict(server: RunningServer) -> None:
    x = v2_batch()
    inp = tg.InferInput("images", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    client = tg.InferenceServerClient(server.grpc_target)
    try:
        params = {"guard_detector": "detrigger_or_repaired"}
        result = client.infer(NAME, [inp], parameters=params)
        response = result.get_response(as_json=True)
        check_verdict({k: next(iter(v.values())) for k, v in response["parameters"].items()})
    finally:
        client.close()
