"""Detector both in proxy mode: the front guard runs the AE (batched) and builds STRIP's
copies, the upstream V2 server (a second guard in local mode) runs the target on
[x; AE(x); copies] in ONE request, and the verdict is the one the upstream gives when it runs
detector both on its own target."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton

from tests.support.promtext import scrape, value
from tests.support.server import RunningServer, binary_proxy_env, serve
from tests.support.tiny_models import TinySpec, add_trigger, clean_image, png_bytes

pytestmark = pytest.mark.slow
Client = Callable[[str], triton.InferenceServerClient]
SPEC = TinySpec()
N = 8  # the set's superimpositions per input


@pytest.fixture(scope="module")
def upstream(both_set: Path) -> Iterator[RunningServer]:
    with serve([both_set], {"GUARD_INTRA_OP_THREADS": "1"}) as server:
        yield server


@pytest.fixture(scope="module")
def front(upstream: RunningServer, both_set: Path) -> Iterator[RunningServer]:
    with serve([both_set], binary_proxy_env(upstream, "tinyboth")) as server:
        yield server


def test_proxy_both_matches_local_both_in_one_upstream_request(
    front: RunningServer, upstream: RunningServer, triton_client: Client
) -> None:
    clean = [clean_image(SPEC, k, seed=k) for k in (2, 7)]
    x = np.stack(clean + [add_trigger(clean[0])])[:, None].astype(np.float32) / 255.0
    inp = triton.InferInput("images", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=True)
    both = {"guard_detector": "both"}
    before = scrape(upstream.url)
    proxied = triton_client(front.url).infer("tinyboth", [inp], parameters=both)
    after = scrape(upstream.url)
    local = triton_client(upstream.url).infer("tinyboth", [inp], parameters=both)

    got = proxied.get_response()["parameters"]
    want = local.get_response()["parameters"]
    assert got["guard_detector"] == "both"
    assert json.loads(got["guard_flagged"]) == [False, False, True]
    for key in (
        "guard_flagged",
        "guard_fired",
        "guard_scores",
        "guard_strip_scores",
        "guard_predicted_class",
        "guard_detriggered_class",
        "guard_threshold",
        "guard_strip_threshold",
    ):
        assert got[key] == want[key], key
    np.testing.assert_allclose(proxied.as_numpy("logits"), local.as_numpy("logits"), atol=1e-6)
    # The upstream got ONE request of N * (n + 2) images (its own default detector ran on them).
    labels = {"model": "tinyboth", "detector": "detrigger"}
    sent = value(after, "guard_batch_size_sum", **labels) - value(
        before, "guard_batch_size_sum", **labels
    )
    assert sent == 3 * (N + 2)


def test_classify_with_both_in_proxy_mode(front: RunningServer) -> None:
    image = clean_image(SPEC, 4, seed=1)
    files = [
        ("images", ("c.png", png_bytes(image), "image/png")),
        ("images", ("t.png", png_bytes(add_trigger(image)), "image/png")),
    ]
    r = httpx.post(front.url + "/classify", files=files, params={"detector": "both"}, timeout=30)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["detector"] == "both"
    assert [res["flagged"] for res in body["results"]] == [False, True]
    assert [res["fired"] for res in body["results"]] == [[], ["detrigger", "strip"]]
    assert [res["predicted"]["class"] for res in body["results"]] == [4, 0]
