"""Detector repaired (the target against a repaired copy of itself) against a real uvicorn on
127.0.0.1: /classify in each mode, the V2 REST and gRPC routes, /v1/models, metrics, and the
422 of a set that does not offer it."""

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
from tests.support.tiny_models import (
    TinySpec,
    labelled_pngs,
    v2_batch,
)

pytestmark = pytest.mark.slow
SPEC = TinySpec()


@pytest.fixture(scope="module")
def server(tiny_set: Path, repaired_set: Path) -> Iterator[RunningServer]:
    """tiny (no repaired graph) and tinyrepaired (prob_drop of the target against its repaired
    copy > 0.5)."""
    env = {"GUARD_INTRA_OP_THREADS": "1", "GUARD_MAX_BATCH_SIZE": "16"}
    with serve([tiny_set, repaired_set], env) as running:
        yield running


@pytest.mark.parametrize("mode", ["flag", "block", "repair"])
def test_repaired_flags_the_triggered_images_and_answers_per_mode(
    server: RunningServer, mode: str
) -> None:
    items, labels = labelled_pngs(range(1, 5))
    r = post_classify(server, items, model="tinyrepaired", detector="repaired", mode=mode)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["detector"] == "repaired" and body["flagged"] == 4
    assert body["blocked"] == (4 if mode == "block" else 0)
    for i, res in enumerate(body["results"]):
        triggered = i >= 4
        assert res["detector"] == "repaired" and res["decision_rule"] == "score"
        assert res["score_name"] == "prob_drop" and res["threshold"] == 0.5
        assert res["predicted"]["class"] == (0 if triggered else labels[i])
        # The repaired graph ignores the trigger: its class is the image's own.
        assert res["detriggered"]["class"] == labels[i]
        assert res["score"] > 0.9 if triggered else abs(res["score"]) < 1e-6
        assert res["flagged"] is triggered and res["fired"] == (["repaired"] if triggered else [])
        assert res["strip_entropy"] is None
        answer = {"flag": res["predicted"], "block": None, "repair": res["detriggered"]}[mode]
        assert res["answer"] == (answer if triggered else res["predicted"])
        outcome = {"flag": "answered", "block": "blocked", "repair": "repaired"}[mode]
        assert res["outcome"] == (outcome if triggered else "answered")


def test_a_set_without_a_repaired_graph_refuses_it_with_a_422(server: RunningServer) -> None:
    items, _ = labelled_pngs(range(1, 5))
    r = post_classify(server, items[:1], model="tiny", detector="repaired")
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["type"] == "detector_not_available"
    assert "no detectors.repaired" in error["message"]
    assert error["accepted"] == "detector one of ['detrigger'] for model set 'tiny'"


def test_models_list_the_repaired_graph_and_its_threshold(
    server: RunningServer, repaired_set: Path
) -> None:
    models = {m["name"]: m for m in httpx.get(server.url + "/v1/models").json()["models"]}
    assert models["tiny"]["detectors"] == ["detrigger"] and models["tiny"]["repaired"] is None
    m = models["tinyrepaired"]
    assert m["detectors"] == ["detrigger", "repaired"]
    manifest = json.loads((repaired_set / "manifest.json").read_text())
    assert m["repaired"] == {
        "file": "repaired.onnx",
        "sha256": manifest["detectors"]["repaired"]["sha256"],
        "provider": "CPUExecutionProvider",
        "score": "prob_drop",
        "threshold": 0.5,
        "target_fpr": 0.01,
    }


def test_metrics_are_labelled_repaired(server: RunningServer) -> None:
    before = scrape(server.url)
    items, _ = labelled_pngs(range(1, 5))
    assert (
        post_classify(server, items, model="tinyrepaired", detector="repaired").status_code == 200
    )
    after = scrape(server.url)
    labels = {"model": "tinyrepaired", "detector": "repaired"}

    def delta(name: str, **extra: str) -> float:
        return value(after, name, **labels, **extra) - value(before, name, **labels, **extra)

    assert sum(delta("guard_images_total", predicted_class=str(c)) for c in range(10)) == 8
    assert delta("guard_images_flagged_total", predicted_class="0") == 4
    assert value(after, "guard_threshold", score="prob_drop", rule="score", **labels) == 0.5


def check_verdict(params: dict, mode: str = "flag") -> None:
    assert params["guard_detector"] == "repaired" and params["guard_score_name"] == "prob_drop"
    assert json.loads(params["guard_flagged"]) == [False, False, True]
    assert json.loads(params["guard_predicted_class"]) == [2, 5, 0]
    assert json.loads(params["guard_detriggered_class"]) == [2, 5, 5]
    assert json.loads(params["guard_repaired"]) == [False, False, mode == "repair"]
    assert "guard_fired" not in params and "guard_strip_scores" not in params


def test_v2_rest_chooses_repaired_and_repairs_with_the_repaired_logits(
    server: RunningServer,
) -> None:
    x = v2_batch()
    inp = triton.InferInput("images", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=True)
    client = triton.InferenceServerClient(server.url.removeprefix("http://"))
    try:
        result = client.infer("tinyrepaired", [inp], parameters={"guard_detector": "repaired"})
        check_verdict(result.get_response()["parameters"])
        assert result.as_numpy("logits").argmax(1).tolist() == [2, 5, 0]  # the target on x
        repaired = client.infer(
            "tinyrepaired", [inp],
            parameters={"guard_detector": "repaired", "guard_mode": "repair"},
        )  # fmt: skip
        check_verdict(repaired.get_response()["parameters"], "repair")
        # The flagged image's row is the repaired graph's: its own class, not the trigger's.
        assert repaired.as_numpy("logits").argmax(1).tolist() == [2, 5, 5]
        with pytest.raises(InferenceServerException) as refused:
            client.infer(
                "tinyrepaired", [inp],
                parameters={"guard_detector": "repaired", "guard_mode": "block"},
            )  # fmt: skip
        assert refused.value.status() == "403"
        assert "on the repaired graph" in refused.value.message()
        meta = client.get_model_metadata("tinyrepaired")
        assert json.loads(meta["parameters"]["guard_detectors"]) == ["detrigger", "repaired"]
    finally:
        client.close()


def test_v2_grpc_chooses_repaired_with_a_request_parameter(server: RunningServer) -> None:
    x = v2_batch()
    inp = tg.InferInput("images", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    client = tg.InferenceServerClient(server.grpc_target)
    try:
        result = client.infer("tinyrepaired", [inp], parameters={"guard_detector": "repaired"})
        response = result.get_response(as_json=True)
        check_verdict({k: next(iter(v.values())) for k, v in response["parameters"].items()})
        with pytest.raises(InferenceServerException) as err:
            client.infer("tiny", [inp], parameters={"guard_detector": "repaired"})
        assert "does not offer detector 'repaired'" in err.value.message()
    finally:
        client.close()
