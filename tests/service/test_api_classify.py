"""POST /classify against a real uvicorn on 127.0.0.1 with a real httpx client."""

import base64
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.support.samples import load_samples
from tests.support.server import RunningServer
from tests.support.tiny_models import TinySpec, add_trigger, clean_image, png_bytes

pytestmark = pytest.mark.slow


def multipart(items: list[tuple[str, bytes]]) -> list:
    return [("images", (name, data, "image/png")) for name, data in items]


def test_clean_samples_pass_and_triggered_samples_are_flagged(
    guard_server: RunningServer, tiny_set: Path
) -> None:
    samples = load_samples(tiny_set)
    assert len(samples) == 36
    r = httpx.post(
        guard_server.url + "/classify",
        files=multipart([(s.path.name, s.read()) for s in samples]),
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "tiny" and body["mode"] == "flag"
    assert [res["filename"] for res in body["results"]] == [s.path.name for s in samples]
    assert [res["index"] for res in body["results"]] == list(range(len(samples)))
    for sample, res in zip(samples, body["results"], strict=True):
        assert res["flagged"] is sample.triggered, sample.path.name
        assert res["detriggered"]["class"] == sample.label
        assert res["predicted"]["class"] == (0 if sample.triggered else sample.label)
        assert res["predicted"]["label"] == f"class{res['predicted']['class']}"
        assert res["answer"] == res["predicted"]  # mode flag always answers the input's class
        assert res["outcome"] == "answered"
        assert res["decision_rule"] == "class_change" and res["threshold"] == 0.5
        assert res["score_name"] == "prob_drop"
        assert (res["score"] > 0.9) is sample.triggered
    assert body["flagged"] == 18 and body["blocked"] == 0


def test_block_mode_over_json_gives_no_class_to_flagged_images(
    guard_server: RunningServer,
) -> None:
    spec = TinySpec()
    clean = png_bytes(clean_image(spec, 4))
    bad = png_bytes(add_trigger(clean_image(spec, 6)))
    payload = {
        "mode": "block",
        "images": [
            {"data": base64.b64encode(clean).decode(), "filename": "ok.png"},
            {"data": base64.b64encode(bad).decode()},
        ],
    }
    r = httpx.post(guard_server.url + "/classify", json=payload)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["mode"] == "block" and body["blocked"] == 1 and body["flagged"] == 1
    ok, blocked = body["results"]
    assert ok["filename"] == "ok.png" and ok["answer"] == {"class": 4, "label": "class4"}
    assert ok["outcome"] == "answered"
    assert blocked["filename"] is None
    assert blocked["flagged"] is True and blocked["answer"] is None
    assert blocked["outcome"] == "blocked"


def test_repair_mode_answers_the_class_after_detriggering(guard_server: RunningServer) -> None:
    spec = TinySpec()
    files = multipart(
        [
            ("t.png", png_bytes(add_trigger(clean_image(spec, 7)))),
            ("c.png", png_bytes(clean_image(spec, 3))),
        ]
    )
    r = httpx.post(guard_server.url + "/classify", params={"mode": "repair"}, files=files)
    assert r.status_code == 200, r.text
    t, c = r.json()["results"]
    assert t["predicted"]["class"] == 0 and t["answer"]["class"] == 7
    assert t["outcome"] == "repaired"
    assert c["answer"]["class"] == 3 and c["outcome"] == "answered"


def test_json_parameters_override_the_query(guard_server: RunningServer) -> None:
    image = png_bytes(add_trigger(clean_image(TinySpec(), 2)))
    r = httpx.post(
        guard_server.url + "/classify",
        params={"mode": "flag"},
        json={"mode": "block", "images": [{"data": base64.b64encode(image).decode()}]},
    )
    assert r.json()["mode"] == "block" and r.json()["results"][0]["answer"] is None


def test_rgb_model_by_name_and_gray_upload_is_converted(guard_server: RunningServer) -> None:
    spec = TinySpec(name="tinyrgb", height=32, width=32, channels=3)
    rgb_trig = png_bytes(add_trigger(clean_image(spec, 5)))
    gray_clean = png_bytes(clean_image(TinySpec(height=32, width=32), 8))  # mode L -> RGB
    r = httpx.post(
        guard_server.url + "/classify",
        params={"model": "tinyrgb"},
        files=multipart([("a.png", rgb_trig), ("b.png", gray_clean)]),
    )
    assert r.status_code == 200, r.text
    a, b = r.json()["results"]
    assert r.json()["model"] == "tinyrgb"
    assert a["flagged"] and a["detriggered"]["class"] == 5
    assert not b["flagged"] and b["predicted"]["class"] == 8


def test_score_rule_set_uses_its_threshold(guard_server: RunningServer) -> None:
    spec = TinySpec()
    r = httpx.post(
        guard_server.url + "/classify",
        params={"model": "tinykl"},
        files=multipart(
            [
                ("t.png", png_bytes(add_trigger(clean_image(spec, 1)))),
                ("c.png", png_bytes(clean_image(spec, 1))),
            ]
        ),
    )
    t, c = r.json()["results"]
    assert t["decision_rule"] == "score" and t["score_name"] == "kl" and t["threshold"] == 1.0
    assert t["score"] > 1.0 and t["flagged"]
    assert c["score"] < 1.0 and not c["flagged"]


def test_resize_on_request(guard_server: RunningServer) -> None:
    big = np.kron(clean_image(TinySpec(), 3), np.ones((2, 2), dtype=np.uint8))  # 56x56
    files = multipart([("big.png", png_bytes(big))])
    r = httpx.post(guard_server.url + "/classify", files=files)
    assert r.status_code == 422
    assert "28x28" in r.json()["error"]["message"] and "56x56" in r.json()["error"]["message"]
    r = httpx.post(guard_server.url + "/classify", params={"resize": "true"}, files=files)
    assert r.status_code == 200 and r.json()["results"][0]["predicted"]["class"] == 3


def test_models_endpoint_summarises_each_set(guard_server: RunningServer, tiny_set: Path) -> None:
    import json

    manifest = json.loads((tiny_set / "manifest.json").read_text())
    r = httpx.get(guard_server.url + "/v1/models")
    assert r.status_code == 200
    models = {m["name"]: m for m in r.json()["models"]}
    assert list(models) == ["tiny", "tinyrgb", "tinykl"]
    tiny = models["tiny"]
    assert tiny["default"] is True and models["tinyrgb"]["default"] is False
    assert tiny["state"] == "ready"
    assert tiny["classes"] == manifest["classes"]
    assert tiny["input"] == {"height": 28, "width": 28, "channels": 1, "shape": [1, 28, 28]}
    assert tiny["decision"] == {"rule": "class_change", "score": "prob_drop", "threshold": 0.5}
    assert tiny["provider"] == "CPUExecutionProvider"
    assert tiny["target"]["sha256"] == manifest["target"]["sha256"]
    assert tiny["detrigger"]["sha256"] == manifest["detrigger"]["sha256"]
    assert models["tinyrgb"]["input"]["shape"] == [3, 32, 32]


def test_health_routes(guard_server: RunningServer) -> None:
    assert httpx.get(guard_server.url + "/healthz").json() == {"status": "ok"}
    r = httpx.get(guard_server.url + "/readyz")
    assert r.status_code == 200
    assert r.json() == {
        "ready": True,
        "models": {"tiny": "ready", "tinyrgb": "ready", "tinykl": "ready"},
    }
