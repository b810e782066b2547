"""Metrics, logs, request ids, auth, readiness and back-pressure, each on a fresh real server."""

import base64
import concurrent.futures
import json
import shutil
from pathlib import Path

import httpx
import pytest

from service.metrics import SCORE_BUCKETS
from tests.support.promtext import scrape, series, value
from tests.support.server import RunningServer, serve
from tests.support.tiny_models import TinySpec, add_trigger, clean_image, png_bytes

pytestmark = pytest.mark.slow

SPEC = TinySpec()


def files(items: list[bytes]) -> list:
    return [("images", (f"img{i}.png", data, "image/png")) for i, data in enumerate(items)]


def test_metrics_count_exactly_what_was_sent(tiny_set: Path) -> None:
    with serve([tiny_set]) as server:
        url = server.url
        # Request 1 (multipart): clean classes 1..5 and triggered classes 1..3.
        clean = [png_bytes(clean_image(SPEC, k, seed=k)) for k in range(1, 6)]
        trig = [png_bytes(add_trigger(clean_image(SPEC, k, seed=k))) for k in range(1, 4)]
        assert httpx.post(url + "/classify", files=files(clean + trig)).status_code == 200
        # Request 2 (JSON): clean class 9 twice, triggered class 8 once.
        images = [
            clean_image(SPEC, 9),
            clean_image(SPEC, 9, seed=3),
            add_trigger(clean_image(SPEC, 8)),
        ]
        payload = {"images": [{"data": base64.b64encode(png_bytes(i)).decode()} for i in images]}
        assert httpx.post(url + "/classify", json=payload).status_code == 200
        # Request 3: refused (415), classifies nothing.
        assert (
            httpx.post(
                url + "/classify", content=b"x", headers={"content-type": "text/plain"}
            ).status_code
            == 415
        )

        m = scrape(url)
        want_images = {"0": 4, "1": 1, "2": 1, "3": 1, "4": 1, "5": 1, "9": 2}
        for c in range(10):
            assert value(
                m, "guard_images_total", model="tiny", predicted_class=str(c), detector="detrigger"
            ) == want_images.get(str(c), 0), c
            want_flagged = (
                4 if c == 0 else 0
            )  # flagged images were predicted as 0 (the backdoor class)
            assert (
                value(
                    m,
                    "guard_images_flagged_total",
                    model="tiny",
                    predicted_class=str(c),
                    detector="detrigger",
                )
                == want_flagged
            )
        assert len(series(m, "guard_images_total")) == 10  # bounded: one series per class
        post = {"route": "/classify", "method": "POST"}
        assert value(m, "guard_http_requests_total", status_class="2xx", **post) == 2
        assert value(m, "guard_http_requests_total", status_class="4xx", **post) == 1
        assert value(m, "guard_http_requests_total", status_class="5xx", **post) == 0
        # Stages by model set; the 415 was refused before any set was resolved: model "".
        duration = "guard_stage_duration_seconds_count"
        assert value(m, duration, stage="total", model="tiny") == 2
        assert value(m, duration, stage="total", model="") == 1
        assert value(m, duration, stage="decode", model="tiny") == 2
        assert value(m, duration, stage="inference", model="tiny") >= 1
        # One score per judged image; the class_change rule compares no score: no threshold.
        assert value(m, "guard_score_count", model="tiny", detector="detrigger") == 11
        assert series(m, "guard_threshold") == {}
        # The standard collectors, on the app's own registry.
        assert value(m, "process_resident_memory_bytes") > 0
        names = {name for name, _ in m}
        assert {"python_gc_collections_total", "python_info"} <= names
        assert value(m, "guard_batch_size_sum", model="tiny", detector="detrigger") == 11
        assert value(m, "guard_requests_in_flight") == 1  # this scrape
        assert value(m, "guard_queue_depth", model="tiny") == 0
        assert value(m, "guard_model_ready", model="tiny") == 1
        # Ready only after loading and warming up; the provider in use is logged.
        (ready_log,) = [x for x in server.log_records() if x["message"] == "model set ready"]
        assert ready_log["model"] == "tiny" and ready_log["provider"] == "CPUExecutionProvider"
        assert ready_log["warmup_batch_sizes"] == [1, 64]
        assert (
            ready_log["target_sha256"]
            == json.loads((tiny_set / "manifest.json").read_text())["target"]["sha256"]
        )
        manifest = json.loads((tiny_set / "manifest.json").read_text())
        info = series(m, "guard_model_info")
        assert len(info) == 1
        (labels,) = info
        assert dict(labels) == {
            "model": "tiny",
            "provider": "CPUExecutionProvider",
            "target_sha256": manifest["target"]["sha256"][:12],
            "detrigger_sha256": manifest["detrigger"]["sha256"][:12],
            "decision_rule": "class_change",
        }
        # Unmatched paths are one bounded series, not one per path.
        httpx.get(url + "/random/a"), httpx.get(url + "/random/b")
        m = scrape(url)
        assert (
            value(
                m,
                "guard_http_requests_total",
                route="<unmatched>",
                method="GET",
                status_class="4xx",
            )
            == 2
        )


def test_logs_are_json_with_request_ids_and_no_image_bytes(guard_server: RunningServer) -> None:
    image = png_bytes(add_trigger(clean_image(SPEC, 6, seed=42)))
    encoded = base64.b64encode(image).decode()
    r = httpx.post(
        guard_server.url + "/classify",
        json={"images": [{"data": encoded, "filename": "evil.png"}]},
        headers={"X-Request-ID": "test-req-0001"},
    )
    assert r.status_code == 200 and r.headers["x-request-id"] == "test-req-0001"
    # An unsafe incoming id is replaced, not echoed.
    r2 = httpx.get(guard_server.url + "/healthz", headers={"X-Request-ID": "bad id with space"})
    assert (
        r2.headers["x-request-id"] != "bad id with space" and len(r2.headers["x-request-id"]) == 32
    )
    # A bad base64 body whose text must not come back or reach the logs.
    marker = "MARKERBYTES" * 20
    r3 = httpx.post(guard_server.url + "/classify", json={"images": [{"data": marker + "%%"}]})
    assert r3.status_code == 400 and marker not in r3.text

    records = guard_server.log_records()
    flagged = [
        x
        for x in records
        if x.get("message") == "flagged image" and x.get("request_id") == "test-req-0001"
    ]
    assert len(flagged) == 1
    rec = flagged[0]
    assert rec["level"] == "WARNING" and rec["model"] == "tiny"
    assert rec["predicted"] == "class0" and rec["detriggered"] == "class6"
    assert rec["score"] > 0.9 and rec["image_filename"] == "evil.png"
    access = [
        x
        for x in records
        if x.get("logger") == "guard.access" and x.get("request_id") == "test-req-0001"
    ]
    assert access and access[0]["status"] == 200 and access[0]["route"] == "/classify"
    text = guard_server.log_text()
    assert encoded[:40] not in text and marker not in text
    assert "\\x89PNG" not in text and "iVBORw0KGgo" not in text  # raw or base64 PNG signature


def test_uvicorns_own_lines_are_json_too(tiny_set: Path) -> None:
    """uvicorn's startup and shutdown lines were plain text beside the guard's JSON lines."""
    with serve([tiny_set], extra_args=("--log-level", "info")) as server:
        httpx.get(server.url + "/healthz")
    assert not server.log_path.parent.exists()  # the log's folder is gone, its text kept
    text = server.log_text()
    lines = [line for line in text.splitlines() if line.strip()]
    records = server.log_records()
    assert len(records) == len(lines), [line for line in lines if not line.startswith("{")]
    uvicorn = {x["message"] for x in records if x["logger"].startswith("uvicorn")}
    assert {"Application startup complete.", "Application shutdown complete."} <= uvicorn
    assert not [x for x in records if x["logger"] == "uvicorn.access"]  # --no-access-log holds
    assert "\x1b[" not in text and "color_message" not in text


def test_api_key_auth(tiny_set: Path) -> None:
    key = "k" * 8 + "0123456789"
    env = {"GUARD_API_KEYS": f"another-key-000000,{key}", "GUARD_PROTECT_METRICS": "true"}
    with serve([tiny_set], env) as server:
        url = server.url
        body = files([png_bytes(clean_image(SPEC, 2))])
        r = httpx.post(url + "/classify", files=body)
        assert r.status_code == 401 and r.json()["error"]["type"] == "unauthorized"
        assert "www-authenticate" in r.headers
        assert (
            httpx.post(url + "/classify", files=body, headers={"X-API-Key": key + "x"}).status_code
            == 401
        )
        assert (
            httpx.post(url + "/classify", files=body, headers={"X-API-Key": key}).status_code == 200
        )
        ok = httpx.post(url + "/classify", files=body, headers={"Authorization": f"Bearer {key}"})
        assert ok.status_code == 200
        assert httpx.get(url + "/v1/models").status_code == 401
        # V2 infer checks the key in its handler (no dependencies on the hot path): the same
        # answers, and the key is checked before the body is read.
        pixels = (clean_image(SPEC, 2) / 255.0).ravel().tolist()
        tensor = {"name": "images", "datatype": "FP32", "shape": [1, 1, 28, 28], "data": pixels}
        infer = url + "/v2/models/tiny/infer"
        r = httpx.post(infer, json={"inputs": [tensor]})
        assert r.status_code == 401 and "www-authenticate" in r.headers, r.text
        assert httpx.post(infer, content=b"not json").status_code == 401
        assert (
            httpx.post(
                infer, json={"inputs": [tensor]}, headers={"X-API-Key": key + "x"}
            ).status_code
            == 401
        )
        for auth in ({"X-API-Key": key}, {"Authorization": f"Bearer {key}"}):
            r = httpx.post(infer, json={"inputs": [tensor]}, headers=auth)
            assert r.status_code == 200 and r.json()["parameters"]["guard_flagged_count"] == 0
        assert httpx.get(url + "/v2/models/tiny").status_code == 401
        # Health stays open (GUARD_PROTECT_HEALTH is off); metrics is protected here.
        assert httpx.get(url + "/healthz").status_code == 200
        assert httpx.get(url + "/readyz").status_code == 200
        assert httpx.get(url + "/metrics").status_code == 401
        m = httpx.get(url + "/metrics", headers={"X-API-Key": key})
        assert m.status_code == 200 and "guard_images_total" in m.text
        assert key not in server.log_text()


def test_a_bad_set_leaves_the_service_not_ready(
    tiny_set: Path, rgb_set: Path, tmp_path: Path
) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(rgb_set, broken)
    with (broken / "detrigger.onnx").open("ab") as f:
        f.write(b"tampered")
    with serve([tiny_set, broken], wait_ready=False) as server:
        url = server.url
        for _ in range(100):
            states = {m["name"]: m["state"] for m in httpx.get(url + "/v1/models").json()["models"]}
            if "loading" not in states.values():
                break
            __import__("time").sleep(0.1)
        assert states == {"tiny": "ready", "tinyrgb": "failed"}
        r = httpx.get(url + "/readyz")
        assert r.status_code == 503
        reason = r.json()["models"]["tinyrgb"]
        assert "detrigger.onnx" in reason and "sha256 mismatch" in reason
        assert r.json()["models"]["tiny"] == "ready"
        # The failed set is never served, half or whole; the good set still is.
        rgb = files([png_bytes(clean_image(TinySpec(height=32, width=32, channels=3), 1))])
        r = httpx.post(url + "/classify", params={"model": "tinyrgb"}, files=rgb)
        assert r.status_code == 503 and r.json()["error"]["type"] == "model_not_ready"
        assert "detrigger.onnx" in r.json()["error"]["message"] and r.json()["error"]["accepted"]
        assert r.headers["retry-after"] == "1"
        assert (
            httpx.post(
                url + "/classify", files=files([png_bytes(clean_image(SPEC, 1))])
            ).status_code
            == 200
        )
        m = scrape(url)
        assert value(m, "guard_model_ready", model="tinyrgb") == 0
        assert value(m, "guard_model_ready", model="tiny") == 1
        errors = [x for x in server.log_records() if x["level"] == "ERROR"]
        assert any("detrigger.onnx" in str(x.get("reason")) for x in errors)


def test_full_queue_answers_503_with_retry_after_and_requests_batch_together(
    tiny_set: Path,
) -> None:
    env = {
        "GUARD_MAX_QUEUE_IMAGES": "16",
        "GUARD_MAX_IMAGES_PER_REQUEST": "16",
        "GUARD_MAX_BATCH_SIZE": "16",
        "GUARD_MAX_BATCH_WAIT_MS": "1000",  # a lone request waits this long for company
        "GUARD_RETRY_AFTER_SECONDS": "3",
    }
    with serve([tiny_set], env) as server:
        url = server.url
        ten = files([png_bytes(clean_image(SPEC, 1 + i % 9, seed=i)) for i in range(10)])
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            waiting = pool.submit(httpx.post, url + "/classify", files=ten, timeout=30)
            # Wait until the 10 images sit in the queue.
            for _ in range(100):
                if value(scrape(url), "guard_queue_depth", model="tiny") == 10:
                    break
                __import__("time").sleep(0.02)
            refused = httpx.post(url + "/classify", files=ten)
            assert refused.status_code == 503
            assert refused.headers["retry-after"] == "3"
            assert refused.json()["error"]["type"] == "queue_full"
            # Six single-image requests fit (10 + 6 = 16 = a full batch) and run with the ten.
            singles = [
                pool.submit(
                    httpx.post,
                    url + "/classify",
                    files=files([png_bytes(clean_image(SPEC, 4))]),
                    timeout=30,
                )
                for _ in range(6)
            ]
            assert waiting.result().status_code == 200
            assert all(s.result().status_code == 200 for s in singles)
        m = scrape(url)
        assert value(m, "guard_batch_size_sum", model="tiny", detector="detrigger") == 16
        assert (
            value(m, "guard_batch_size_count", model="tiny", detector="detrigger") < 7
        )  # 7 requests, fewer batches
        assert httpx.get(url + "/readyz").status_code == 200


def test_two_folders_with_one_name_fail_the_second(tiny_set: Path, tmp_path: Path) -> None:
    twin = tmp_path / "twin"
    shutil.copytree(tiny_set, twin)
    with serve([tiny_set, twin], wait_ready=False) as server:
        for _ in range(100):
            r = httpx.get(server.url + "/readyz")
            if "loading" not in r.json()["models"].values():
                break
            __import__("time").sleep(0.1)
        assert r.status_code == 503
        reasons = r.json()["models"]
        assert reasons["tiny"] == "ready"
        (twin_name,) = [n for n in reasons if n != "tiny"]
        assert "already used" in reasons[twin_name] and str(twin) in twin_name


def test_threshold_gauge_marks_the_score_rules(guard_server: RunningServer) -> None:
    """tinykl flags on kl > 1.0: its threshold is exported; class_change sets export none."""
    m = scrape(guard_server.url)
    thresholds = series(m, "guard_threshold")
    want = frozenset(
        {"model": "tinykl", "detector": "detrigger", "score": "kl", "rule": "score"}.items()
    )
    assert thresholds == {want: 1.0}
    buckets = [dict(labels)["le"] for labels in series(m, "guard_score_bucket")]
    assert len(set(buckets)) == len(SCORE_BUCKETS) + 1  # bounded: the fixed buckets and +Inf
